// The cardinality budget: values past the cap fold into "_other" and are counted once.
import test from 'ava';
import { LabelBudget, OVERFLOW_VALUE } from '../agent/aggregate/budget.js';

test('values past the cap become _other, each refused value counted once; release frees a slot', (t) => {
  const drops: string[] = [];
  const b = new LabelBudget({ cgroup: 2 }, (l) => drops.push(l));
  t.is(b.admit('cgroup', '/a'), '/a');
  t.is(b.admit('cgroup', '/b'), '/b');
  t.is(b.admit('cgroup', '/c'), OVERFLOW_VALUE);
  t.is(b.admit('cgroup', '/c'), OVERFLOW_VALUE);
  t.is(b.admit('cgroup', '/a'), '/a');
  t.deepEqual(drops, ['cgroup']);
  b.release('cgroup', '/a');
  t.is(b.admit('cgroup', '/c'), '/c');
  t.is(b.size('cgroup'), 2);
  t.is(b.admit('vm', 'anything'), 'anything', 'labels without a cap pass through');
});

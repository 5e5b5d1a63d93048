// The cardinality budget: values past the cap fold into "_other" and are counted once.
import test from 'ava';
import { LabelBudget, OVERFLOW_VALUE } from '../agent/aggregate/budget.js';

test('values past the cap become _other, each refused value counted once; release frees a slot for new values', (t) => {
  const drops: string[] = [];
  const b = new LabelBudget({ cgroup: 2 }, (l) => drops.push(l));
  t.is(b.admit('cgroup', '/a'), '/a');
  t.is(b.admit('cgroup', '/b'), '/b');
  t.is(b.admit('cgroup', '/c'), OVERFLOW_VALUE);
  t.is(b.admit('cgroup', '/c'), OVERFLOW_VALUE);
  t.is(b.admit('cgroup', '/a'), '/a');
  t.deepEqual(drops, ['cgroup']);
  b.release('cgroup', '/a');
  t.is(b.admit('cgroup', '/c'), OVERFLOW_VALUE, 'a refused value stays in _other while its object lives, so _other never goes backwards');
  t.is(b.admit('cgroup', '/d'), '/d', 'the freed slot goes to a new value');
  b.release('cgroup', '/c');
  b.release('cgroup', '/b');
  t.is(b.admit('cgroup', '/c'), '/c', 'a released value is new again');
  t.is(b.size('cgroup'), 2);
  t.is(b.admit('vm', 'anything'), 'anything', 'labels without a cap pass through');
});

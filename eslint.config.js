// ESLint flat config: typescript-eslint's recommended rules over the TypeScript sources
// (`npm run lint`; CI runs it through test/lint.test.ts). Generated and built files are
// not linted.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'bpf/build/**', 'test/helpers/build/**', '.cache/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    files: ['**/*.ts', '**/*.js'],
    languageOptions: { ecmaVersion: 2022, sourceType: 'module' },
    rules: {
      // A leading underscore marks a binding kept on purpose (a destructured field left
      // out of `...rest`, a callback parameter the signature requires).
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' }],
      // The agent strips control characters from names it exports and prints (VM names,
      // JUnit text, the terminal view), so its regular expressions name them.
      'no-control-regex': 'off',
    },
  },
);

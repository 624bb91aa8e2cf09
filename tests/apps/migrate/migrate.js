// A stand-in for a database migration: it leaves a marker in the shared volume, or fails.
const fs = require('node:fs');
if (process.argv.includes('--fail')) {
  console.log('migration failed: column "email" already exists');
  process.exit(2);
}
fs.writeFileSync('/data/migrated', `migrated for generation ${process.env.FERRY_GENERATION}\n`);
console.log('migration done');

// Answers with what the deploy_command left in the shared volume.
const fs = require('node:fs');
const http = require('node:http');
const port = Number(process.env.PORT || 3000);
http
  .createServer((req, res) => {
    if (req.url === '/healthz') return res.end('ok\n');
    let marker = 'no marker';
    try {
      marker = fs.readFileSync('/data/migrated', 'utf8');
    } catch {}
    res.end(`generation ${process.env.FERRY_GENERATION} sees: ${marker}`);
  })
  .listen(port);

// web: answers on PORT (3000), asks the api for its answer, and reports what the api said.
const http = require('node:http');
const express = require('express');

const port = Number(process.env.PORT || 3000);
const apiUrl = process.env.API_URL || 'http://api.cloud66.local:4000';
const generation = process.env.FERRY_GENERATION || 'unknown';

const app = express();
app.get('/healthz', (req, res) => res.send('ok\n'));
// Every other request asks the api, by its .cloud66.local name.
app.use((req, res) => {
  http
    .get(`${apiUrl}/`, (api) => {
      let body = '';
      api.on('data', (c) => (body += c));
      api.on('end', () => res.type('text/plain').send(`web of generation ${generation}; api says: ${body.trim()}\n`));
    })
    .on('error', (e) => {
      res.status(502).type('text/plain').send(`web could not reach the api: ${e.code || e.message}\n`);
    });
});

const server = app.listen(port, () => console.log(`web listening on ${port}`));

// ferry stops a container with SIGTERM after its drain: finish what is in flight, then go.
process.on('SIGTERM', () => {
  console.log('web: SIGTERM, closing');
  server.close(() => process.exit(0));
});

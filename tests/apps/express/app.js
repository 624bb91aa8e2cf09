// An Express app as developers write them. GET /slow?ms=N answers after N ms, to show a
// request in flight finishing when the container is told to stop.
const express = require('express');

const app = express();
const port = Number(process.env.PORT || 3000);
const generation = process.env.FERRY_GENERATION || 'unknown';

app.get('/healthz', (req, res) => res.send('ok\n'));
app.get('/', (req, res) => res.send(`hello from express ${require('express/package.json').version}, generation ${generation}\n`));
app.get('/slow', (req, res) => {
  const ms = Math.min(Number(req.query.ms) || 1000, 30000);
  console.log(`slow request of ${ms} ms started`);
  setTimeout(() => res.send(`slow answer after ${ms} ms\n`), ms);
});

const server = app.listen(port, () => console.log(`express listening on ${port}`));

process.on('SIGTERM', () => {
  console.log('express: SIGTERM, finishing what is in flight');
  server.close(() => {
    console.log('express: closed');
    process.exit(0);
  });
});

// A TypeScript service: compiled at build time, run as JavaScript.
declare const require: (name: string) => any;
declare const process: { env: Record<string, string | undefined>; version: string };

const http = require('node:http');
const port: number = Number(process.env.PORT || 3000);

http
  .createServer((req: { url: string }, res: { end: (body: string) => void }) => {
    if (req.url === '/healthz') return res.end('ok\n');
    res.end(`compiled from TypeScript, running on Node ${process.version}\n`);
  })
  .listen(port, () => console.log(`typescript app listening on ${port}`));

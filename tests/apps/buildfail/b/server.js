require('node:http').createServer((req, res) => res.end('a\n')).listen(3000);

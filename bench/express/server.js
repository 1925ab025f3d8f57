// The Express peers of bench/http-stack.sh, on 127.0.0.1 at ephemeral ports written as JSON to
// the file named by argv[2]:
//
// * `express` — GET /hello answering the same JSON as the Rust targets, on Express's defaults
//   (no logger, no middleware);
// * `express_stack` — the same route behind the middleware a production Express service adds
//   for what Keel's stack does: security headers (helmet), CORS for one origin (cors), a request
//   id taken from `x-request-id` or made (a UUID), echoed on the answer, and a JSON access line
//   per request (pino-http) written to stdout.
//
// Node runs JavaScript on one thread, as a plain `node server.js` deployment does.
'use strict';
const fs = require('fs');
const crypto = require('crypto');
const express = require('express');
const cors = require('cors');
const helmet = require('helmet');
const pinoHttp = require('pino-http');

const hello = (req, res) => res.json({ message: 'hello' });

const bare = express();
bare.get('/hello', hello);

const stack = express();
stack.disable('x-powered-by');
stack.use(helmet());
stack.use(cors({ origin: ['https://app.example.com'] }));
stack.use(
  pinoHttp({
    genReqId: (req, res) => {
      const id = req.headers['x-request-id'] || crypto.randomUUID();
      res.setHeader('x-request-id', id);
      return id;
    },
  }),
);
stack.get('/hello', hello);

const listen = (app) =>
  new Promise((resolve) => {
    const server = app.listen(0, '127.0.0.1', () => resolve(server));
  });

Promise.all([listen(bare), listen(stack)]).then((servers) => {
  const [a, b] = servers.map((s) => `127.0.0.1:${s.address().port}`);
  fs.writeFileSync(process.argv[2], JSON.stringify({ express: a, express_stack: b }));
  process.on('SIGTERM', () => process.exit(0));
});

// The `fetch` the HTTP transport uses unless given one: the part of fetch it
// needs (a method, headers, a string body, a signal; the answer as a
// `Response`), over `node:http` and `node:https`.
//
// Why not Node's own `fetch` (undici): it gives up on an answer whose
// headers take more than 300 s (`headersTimeout`), whatever the signal's
// deadline, and litebridge's calls to Python methods may take minutes. Here
// only the caller's signal ends a request: the transport gives every call a
// deadline of its own. Redirects are never followed (node:http does not), and
// answers are never inflated.
//
// Connections are kept alive, each transport with agents of its own, and an
// idle one is closed after `IDLE_MS`, before litebridge's own idle limit
// (`server.read_timeout_ms`, 30 s by default, at least 100 ms) could close
// it as a request is sent on it: a request on a connection the server closed
// fails, and a write would have to be reported as may-have-run. An answer's
// `Keep-Alive: timeout=N` shortens it (Node's agent reads it).

import http from 'node:http';
import https from 'node:https';
import { Readable } from 'node:stream';

/** How long a kept-alive connection may sit idle before it is closed (ms), as undici's default. */
export const IDLE_MS = 4_000;

/**
 * A fetch over node:http, with agents of its own; `close()` ends its
 * connections. Failures are as fetch's: a `TypeError('fetch failed')` whose
 * `cause` is the socket's, DNS's or TLS's error; a `TypeError` with no cause
 * for a request it cannot make (a header value it cannot carry); the
 * signal's reason once aborted.
 */
export function nodeFetch() {
  const agents = {
    'http:': new http.Agent({ keepAlive: true, timeout: IDLE_MS }),
    'https:': new https.Agent({ keepAlive: true, timeout: IDLE_MS }),
  };
  const fetch = (url, { method = 'GET', headers = {}, body, signal } = {}) =>
    new Promise((resolve, reject) => {
      if (signal?.aborted) {
        reject(signal.reason);
        return;
      }
      let target;
      try {
        target = new URL(url);
      } catch (e) {
        reject(new TypeError('fetch failed', { cause: e }));
        return;
      }
      const agent = agents[target.protocol];
      if (!agent) {
        reject(new TypeError('fetch failed', { cause: new Error('unknown scheme') }));
        return;
      }
      const lib = target.protocol === 'https:' ? https : http;
      const head = { ...headers };
      if (body !== undefined) head['content-length'] = String(Buffer.byteLength(body));
      let req;
      try {
        req = lib.request(target, { method, headers: head, agent, signal });
      } catch (e) {
        // A header or value node:http refuses: the request was never made.
        reject(new TypeError(`the request cannot be made: ${e?.message ?? e}`));
        return;
      }
      let answered = false;
      req.on('response', (res) => {
        answered = true;
        const status = res.statusCode;
        let response;
        try {
          const all = new Headers();
          const raw = res.rawHeaders;
          for (let i = 0; i + 1 < raw.length; i += 2) all.append(raw[i], raw[i + 1]);
          const empty = method === 'HEAD' || status === 204 || status === 304;
          if (empty) res.resume();
          response = new Response(empty ? null : Readable.toWeb(res), { status, statusText: res.statusMessage, headers: all });
        } catch (e) {
          // A status fetch has no Response for (past 599), or a header a
          // Response cannot hold: not an answer the transport can read.
          res.destroy();
          reject(new TypeError('fetch failed', { cause: new Error(`an answer fetch cannot read (status ${status}): ${e?.message ?? e}`) }));
          return;
        }
        resolve(response);
      });
      req.on('error', (e) => {
        if (answered) return; // the body's stream reports it
        reject(signal?.aborted ? signal.reason : new TypeError('fetch failed', { cause: e }));
      });
      req.end(body);
    });
  fetch.close = () => {
    for (const agent of Object.values(agents)) agent.destroy();
  };
  return fetch;
}

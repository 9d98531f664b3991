// The `fetch` the HTTP transport uses unless given one: the part of fetch it
// needs (a method, headers, a string body, a signal; the answer as a
// `Response`), over `node:http` and `node:https`.
//
// Why not Node's own `fetch` (undici): it gives up on an answer whose
// headers take more than 300 s (`headersTimeout`), whatever the signal's
// deadline, and litebridge's calls to Python methods may take minutes. Here
// only the caller's signal (or `close()`) ends a request once it is connected: the
// transport gives every call a deadline of its own. Redirects are never
// followed (node:http does not), and answers are never inflated.
//
// What the transport must tell apart is whether the request may have
// reached the server. A failure before the connection is made (refused, no
// such host, a TLS handshake that failed, no connection within
// `CONNECT_MS`, the deadline or `close()` while connecting, the fetch
// closed) is a `TypeError` whose `cause` has the code `NOT_CONNECTED`
// (the error behind it as its own cause), even when the signal ended it:
// the request was not sent. A signal already aborted rejects with its
// reason, nothing sent. Anything after the connection may have been read.
// `close()` destroys the agents' connections, in use ones too: the requests
// on them end as after the connection was made.
//
// Connections are kept alive, each fetch with agents of its own, and an
// idle one is closed after `IDLE_MS`, before litebridge's own idle limit
// (`server.read_timeout_ms`, 30 s by default, at least 100 ms) could close
// it as a request is sent on it: a request on a connection the server closed
// fails, and a write would have to be reported as may-have-run. An answer's
// `Keep-Alive: timeout=N` shortens it (Node's agent reads it).
//
// Headers are set on the request after it is made, not passed in its
// options: `NODE_DEBUG=http` prints the options, and they would show the key.

import http from 'node:http';
import https from 'node:https';
import { Readable } from 'node:stream';

/** How long a kept-alive connection may sit idle before it is closed (ms), as undici's default. */
export const IDLE_MS = 4_000;

/** How long a connection (TLS handshake included) may take before the request is given up unsent (ms), as undici's default. */
export const CONNECT_MS = 10_000;

/** The `code` of a failure's cause when the request was certainly never sent. */
export const NOT_CONNECTED = 'LITEBRIDGE_NOT_CONNECTED';

/** The `code` of a failure's cause once the connection was made (the socket's error is its cause). */
export const CONNECTED = 'LITEBRIDGE_CONNECTED';

/** Sockets given a listener for errors after their requests settled (see the 'socket' handler). */
const quieted = new WeakSet();

/** fetch's failure: a TypeError whose `cause` is `e`. */
function failed(e) {
  return new TypeError('fetch failed', { cause: e });
}

/** A failure before the connection was made: `why`, the error behind it kept as its cause. */
function notConnected(why, behind) {
  return failed(Object.assign(new Error(why, behind ? { cause: behind } : undefined), { code: NOT_CONNECTED }));
}

/**
 * A fetch over node:http, with agents of its own; `close()` ends its
 * connections and makes later requests fail unsent. Failures are as
 * fetch's: a `TypeError('fetch failed')` whose `cause` is the socket's
 * error, or says the request was not sent (above); a `TypeError` with no
 * cause for a request it cannot make (a header value it cannot carry); the
 * signal's reason once aborted after the connection was made.
 */
export function nodeFetch() {
  const agents = {
    'http:': new http.Agent({ keepAlive: true, timeout: IDLE_MS }),
    'https:': new https.Agent({ keepAlive: true, timeout: IDLE_MS }),
  };
  let closed = false;
  const fetch = (url, { method = 'GET', headers = {}, body, signal } = {}) =>
    new Promise((resolve, reject) => {
      if (signal?.aborted) {
        reject(signal.reason);
        return;
      }
      if (closed) {
        reject(notConnected('the client is closed'));
        return;
      }
      let target;
      try {
        target = new URL(url);
      } catch (e) {
        reject(failed(e));
        return;
      }
      const agent = agents[target.protocol];
      if (!agent) {
        reject(failed(new Error('unknown scheme')));
        return;
      }
      const lib = target.protocol === 'https:' ? https : http;
      let req;
      let res;
      let settled = false;
      let connected = false;
      let connecting;
      const settle = (outcome, value) => {
        if (settled) return;
        settled = true;
        clearTimeout(connecting);
        outcome(value);
      };
      // Before node:http's own listener (which destroys the socket): a body
      // that ends with the connection would otherwise end cleanly, cut short.
      const onAbort = () => {
        if (res) res.destroy(signal.reason);
        else if (!connected) req?.destroy(notConnected('the deadline passed before the connection was made').cause);
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      try {
        req = lib.request(target, { method, agent, signal });
        for (const [name, value] of Object.entries(headers)) req.setHeader(name, value);
        if (body !== undefined) req.setHeader('content-length', String(Buffer.byteLength(body)));
      } catch (e) {
        // A header or value node:http refuses: the request was never made.
        req?.destroy();
        settle(reject, new TypeError(`the request cannot be made: ${e?.message ?? e}`));
        return;
      }
      req.on('socket', (socket) => {
        // An error on the socket after its request settled (the server
        // answered before it read the body, then reset: EPIPE, ECONNRESET
        // while the body is still written) reaches no request, and node:http
        // throws it as an uncaught 'error' event, which ended the caller's
        // process (review 244; nodejs/node#54366). Errors during a request
        // still reach it through node:http's own listener.
        if (!quieted.has(socket)) {
          quieted.add(socket);
          socket.on('error', () => {});
        }
        // Destroyed already (close() in the same tick): never connected.
        if (socket.destroyed) return;
        const tls = target.protocol === 'https:';
        // A kept-alive connection, reused: made already (and its handshake).
        const protocol = tls ? socket.getProtocol?.() : undefined;
        if (!socket.connecting && (!tls || (protocol != null && protocol !== 'unknown'))) {
          connected = true;
          return;
        }
        const event = tls ? 'secureConnect' : 'connect';
        socket.once(event, () => {
          connected = true;
          clearTimeout(connecting);
        });
        connecting = setTimeout(() => {
          if (!connected) req.destroy(notConnected(`no connection within ${CONNECT_MS} ms`).cause);
        }, CONNECT_MS);
        connecting.unref();
      });
      req.on('response', (answer) => {
        res = answer;
        const status = answer.statusCode;
        let response;
        try {
          const all = new Headers();
          const raw = answer.rawHeaders;
          for (let i = 0; i + 1 < raw.length; i += 2) all.append(raw[i], raw[i + 1]);
          const empty = method === 'HEAD' || status === 204 || status === 304;
          if (empty) answer.resume();
          response = new Response(empty ? null : Readable.toWeb(answer), { status, statusText: answer.statusMessage, headers: all });
        } catch (e) {
          // A status fetch has no Response for (past 599), or a header a
          // Response cannot hold: not an answer the transport can read.
          answer.destroy();
          settle(reject, failed(new Error(`an answer fetch cannot read (status ${status}): ${e?.message ?? e}`)));
          return;
        }
        settle(resolve, response);
      });
      // 101 Switching Protocols: node:http hands the socket over and says
      // nothing else. litebridge never switches: not an answer.
      req.on('upgrade', (answer, socket) => {
        socket.destroy();
        settle(reject, failed(new Error(`the server answered ${answer.statusCode}, switching protocols`)));
      });
      req.on('error', (e) => {
        if (!connected) {
          settle(reject, e?.code === NOT_CONNECTED ? failed(e) : notConnected(`${e?.message ?? e} (before the connection was made)`, e));
        } else if (signal?.aborted) settle(reject, signal.reason);
        // Once connected the request may have been read, whatever the
        // error says (EHOSTUNREACH from a host gone after it ran): its code
        // is kept out of the way of those that mean "never sent".
        else settle(reject, failed(Object.assign(new Error(`${e?.message ?? e} (after the connection was made)`, { cause: e }), { code: CONNECTED })));
      });
      // Whatever else ends the request with no answer: never left pending.
      req.on('close', () => {
        if (!connected) settle(reject, notConnected('the connection closed before it was made'));
        else settle(reject, signal?.aborted ? signal.reason : failed(new Error('the connection closed with no answer')));
      });
      req.end(body);
    });
  fetch.close = () => {
    closed = true;
    for (const agent of Object.values(agents)) agent.destroy();
  };
  return fetch;
}

// Handler shapes of local JavaScript and TypeScript functions (design §13): what a handler
// written for another host receives, and how its answer becomes a page. `node_worker.mjs`
// calls the `fivetran` and `netlify` shapes itself, the way AWS Lambda's Node.js runtime
// calls a handler (promise, callback or return value), and the others through `callHost`.
//
// - fivetran: the request in, the page out; the runtime's own shape.
// - netlify: `handler(event, context)` gets a Netlify `HandlerEvent` whose `body` is the
//   request as a JSON string, and answers `{statusCode, body}`.
// - web: `export default async (req: Request, context) => Response` (Netlify's newer
//   functions, and other hosts'): a Fetch `Request` in, a `Response` out.
// - gcf: Google Cloud Functions' `(req, res)`: Express-like, `req.body` the request
//   parsed, and the answer whatever `res.send()`, `res.json()` or `res.end()` sends.
// - azure: Azure Functions' `(context, req)`, answering through `context.res` (also
//   after `context.done()`) or by returning `{status, body}`.
//
// Without `shape:`, the export called (`handler`, else `lambda_handler`, else the
// default export) and its parameter names decide: a first parameter named `context` or
// `ctx` is azure, a second named `res`, `resp` or `response` gcf, and a default export
// otherwise web. Any other handler is fivetran or netlify, told apart by its answer: an
// object with a numeric `statusCode` and no `state` is Netlify's. Until then its event is
// the request with the HandlerEvent's fields readable on it but not enumerable, so a
// Fivetran function sees exactly the request.
//
// A body that is not a string (or bytes) is taken as the page itself (JSON-encoded). A
// streamed answer (design §13) comes as a `Shaped` whose `stream` holds the body still to
// read: a netlify or azure body that is a ReadableStream or an (async) iterator, or a web
// `Response` of `Content-Type: application/x-ndjson`.

import { randomUUID } from 'node:crypto';

export const INVALID_ANSWER = 'Runtime.InvalidResponse'; // the answer is not of the shape
const DEFAULT_EXPORTS = ['handler', 'lambda_handler'];
const EVENT_FIELDS = [
  'rawUrl', 'rawQuery', 'path', 'httpMethod', 'headers', 'multiValueHeaders',
  'queryStringParameters', 'multiValueQueryStringParameters', 'body', 'isBase64Encoded',
];

/** A host's answer: its status and the page's bytes, or the `stream` of its parts to read. */
export class Shaped {
  constructor(shape, status, body, stream = undefined) {
    this.shape = shape;
    this.status = status;
    this.body = body;
    this.stream = stream;
  }
}

/** The handler answered, but not in its shape's way. */
export class WrongAnswer extends Error {
  name = INVALID_ANSWER;
}

// -- which handler, which shape ------------------------------------------------------------

/** `{name, handler, byDefault}` of the export to call, or null with `wanted` in words. */
export function exportedHandler(namespace, name) {
  const names = name ? [name] : DEFAULT_EXPORTS;
  for (const candidate of names) {
    // A CommonJS module arrives as {default: module.exports, ...the names node detected}.
    const handler = namespace[candidate] ?? namespace.default?.[candidate];
    if (typeof handler === 'function') return { name: candidate, handler, byDefault: false };
  }
  // `export default fn`, `module.exports = fn`, or esbuild's CommonJS `exports.default`
  const fallback = [namespace.default, namespace.default?.default].find((f) => typeof f === 'function');
  if (!name && fallback) return { name: 'default', handler: fallback, byDefault: true };
  return { wanted: [...names, ...(name ? [] : ['default'])].map((n) => `'${n}'`).join(' or ') };
}

/** The shape told by the export and its parameter names, or null (told by the answer). */
export function shapeByExport({ handler, byDefault }) {
  const [first, second] = parameterNames(handler);
  if (['context', 'ctx'].includes(first)) return 'azure';
  if (['res', 'resp', 'response'].includes(second)) return 'gcf';
  return byDefault ? 'web' : null;
}

/** A function's parameter names as written ('' for a destructured one), from its source. */
export function parameterNames(fn) {
  let source;
  try {
    source = Function.prototype.toString.call(fn);
  } catch {
    return [];
  }
  const open = source.indexOf('(');
  const arrow = source.indexOf('=>');
  if (arrow !== -1 && (open === -1 || arrow < open)) {
    return [leadingName(source.slice(0, arrow).replace(/^async\s+/, ''))]; // `x => ...`
  }
  const names = [];
  let depth = 0;
  let current = '';
  for (const char of source.slice(open + 1)) {
    if (depth === 0 && (char === ',' || char === ')')) {
      names.push(leadingName(current));
      current = '';
      if (char === ')') break;
      continue;
    }
    if ('([{'.includes(char)) depth += 1;
    if (')]}'.includes(char)) depth -= 1;
    current += char;
  }
  return names;
}

function leadingName(text) {
  return /^\s*([A-Za-z_$][\w$]*)/.exec(text)?.[1] ?? '';
}

// -- what the handler gets -----------------------------------------------------------------

function requestHeaders(request, body) {
  const agent = String(request?.agent ?? 'connector-runtime').split('/').slice(0, 2).join('/');
  return {
    accept: 'application/json',
    'content-length': String(Buffer.byteLength(body)),
    'content-type': 'application/json',
    host: 'localhost',
    'user-agent': agent,
  };
}

/** Netlify's `HandlerEvent` for a POST of `request` to the function. */
export function netlifyEvent(request, functionName) {
  const body = JSON.stringify(request);
  const headers = requestHeaders(request, body);
  const path = `/.netlify/functions/${functionName}`;
  return {
    rawUrl: `http://localhost${path}`,
    rawQuery: '',
    path,
    httpMethod: 'POST',
    headers,
    multiValueHeaders: Object.fromEntries(Object.entries(headers).map(([k, v]) => [k, [v]])),
    queryStringParameters: {},
    multiValueQueryStringParameters: {},
    body,
    isBase64Encoded: false,
  };
}

/** `request` with the HandlerEvent's fields on it, readable but not enumerable. */
export function requestEvent(request, functionName) {
  let event;
  const field = (key) => ({
    get: () => (event ??= netlifyEvent(request, functionName))[key],
    enumerable: false,
    configurable: true,
  });
  const keys = EVENT_FIELDS.filter((key) => !(key in request));
  return Object.defineProperties(request, Object.fromEntries(keys.map((key) => [key, field(key)])));
}

// -- what it answers -----------------------------------------------------------------------

export function isNetlifyAnswer(answer) {
  return typeof answer?.statusCode === 'number' && !('state' in answer);
}

/**
 * Whether an answer (or a host's body) streams: a ReadableStream, an async iterable or an
 * iterator such as a generator; never an array, a string, bytes or a plain object.
 */
export function isStreamed(answer) {
  if (answer === null || typeof answer !== 'object') return false;
  return typeof answer[Symbol.asyncIterator] === 'function' || typeof answer.getReader === 'function' ||
    (typeof answer.next === 'function' && typeof answer[Symbol.iterator] === 'function');
}

export function netlifyAnswer(answer) {
  if (!isNetlifyAnswer(answer)) {
    throw new WrongAnswer(`a netlify handler returns {statusCode, body}; this one returned ${described(answer)}`);
  }
  if (isStreamed(answer.body)) return new Shaped('netlify', answer.statusCode, null, answer.body);
  const base64 = answer.isBase64Encoded && typeof answer.body === 'string';
  return new Shaped('netlify', answer.statusCode, base64 ? Buffer.from(answer.body, 'base64') : bodyBytes(answer.body));
}

/** A response body as bytes: text as UTF-8, nothing as empty, anything else as JSON. */
export function bodyBytes(body) {
  if (body === undefined || body === null) return Buffer.alloc(0);
  if (typeof body === 'string') return Buffer.from(body, 'utf8');
  if (body instanceof ArrayBuffer || ArrayBuffer.isView(body)) return Buffer.from(body.buffer ?? body, body.byteOffset ?? 0, body.byteLength);
  return Buffer.from(JSON.stringify(body), 'utf8');
}

function described(answer) {
  if (answer === null || answer === undefined) return String(answer);
  if (typeof answer !== 'object') return `a ${typeof answer}`;
  const keys = Object.keys(answer).slice(0, 6).join(', ');
  return `an object (${keys || 'no keys'})`;
}

// -- web, gcf, azure -----------------------------------------------------------------------

/**
 * Call a `web`, `gcf` or `azure` handler; `done(shaped)` or `failed(error)` once.
 * Returns what the worker answers if the event loop empties first: Azure's `context.res`
 * when it was set, else undefined (no answer).
 */
export function callHost(shape, handler, request, functionName, done, failed) {
  let settled = false;
  const finish = (outcome) => {
    if (settled) return;
    settled = true;
    try {
      done(outcome());
    } catch (error) {
      failed(error);
    }
  };
  const fail = (error) => finish(() => { throw error; });
  const call = { web: callWeb, gcf: callGcf, azure: callAzure }[shape];
  return call(handler, request, functionName, finish, fail);
}

function callWeb(handler, request, functionName, finish, fail) {
  const body = JSON.stringify(request);
  const url = `http://localhost/.netlify/functions/${functionName}`;
  const req = new Request(url, { method: 'POST', headers: requestHeaders(request, body), body });
  const context = webContext(url, functionName);
  settle(() => handler(req, context), async (response) => {
    if (!(response instanceof Response)) {
      throw new WrongAnswer(`a web handler returns a Response; this one returned ${described(response)}`);
    }
    if (isNdjson(response) && response.body) {
      finish(() => new Shaped('web', response.status, null, response.body));
      return;
    }
    const bytes = Buffer.from(await response.arrayBuffer());
    finish(() => new Shaped('web', response.status, bytes));
  }, fail);
}

function isNdjson(response) {
  const type = response.headers.get('content-type') ?? '';
  return type.split(';')[0].trim().toLowerCase() === 'application/x-ndjson';
}

/** Netlify's `Context` for a function running here: no geolocation, no deploy. */
function webContext(url, functionName) {
  return {
    account: { id: '' },
    cookies: { get: () => undefined, set: () => {}, delete: () => {} },
    deploy: { context: 'dev', id: '', published: false },
    geo: {},
    ip: '127.0.0.1',
    params: {},
    requestId: randomUUID(),
    server: { region: 'local' },
    site: { id: '', name: functionName, url: 'http://localhost' },
    url: new URL(url),
    waitUntil: () => {},
    json: (value, init) => Response.json(value, init),
  };
}

function callGcf(handler, request, functionName, finish, fail) {
  const body = JSON.stringify(request);
  const headers = requestHeaders(request, body);
  const header = (name) => headers[String(name).toLowerCase()];
  const req = {
    method: 'POST', url: '/', originalUrl: '/', path: '/', protocol: 'http', hostname: 'localhost',
    ip: '127.0.0.1', headers, query: {}, params: {}, body: request, rawBody: Buffer.from(body),
    get: header, header,
  };
  const res = expressResponse((status, bytes) => finish(() => new Shaped('gcf', status, bytes)));
  settle(() => handler(req, res), () => {}, fail); // the answer is what `res` sends
}

/** The Express `res` methods a Cloud Function uses; `send(status, bytes)` on its answer. */
function expressResponse(send) {
  const headers = {};
  const res = {
    statusCode: 200, headersSent: false, locals: {},
    status(code) { res.statusCode = code; return res; },
    set(field, value) {
      const fields = typeof field === 'object' ? field : { [field]: value };
      for (const [name, text] of Object.entries(fields)) headers[name.toLowerCase()] = String(text);
      return res;
    },
    get: (field) => headers[String(field).toLowerCase()],
    type: (type) => res.set('content-type', type),
    send(body) {
      if (res.headersSent) return res;
      res.headersSent = true;
      send(res.statusCode, bodyBytes(body));
      return res;
    },
    json: (value) => res.send(JSON.stringify(value) ?? ''),
    end: (data) => res.send(data ?? ''),
    sendStatus: (code) => res.status(code).send(String(code)),
  };
  res.header = res.set;
  res.setHeader = res.set;
  return res;
}

function callAzure(handler, request, functionName, finish, fail) {
  const body = JSON.stringify(request);
  const url = `http://localhost/api/${functionName}`;
  const headers = requestHeaders(request, body);
  const req = { method: 'POST', url, originalUrl: url, headers, query: {}, params: {}, body: request, rawBody: body };
  const context = azureContext(functionName, req);
  const answer = (response) => finish(() => azureAnswer(response));
  context.done = (error, result) => (error ? fail(error) : answer(result?.res ?? result ?? context.res));
  settle(() => handler(context, req), (result, wasPromise) => {
    if (result !== undefined) answer(result);
    else if (wasPromise) answer(context.res);
  }, fail);
  return () => (context.res === undefined ? undefined : azureAnswer(context.res));
}

function azureContext(functionName, req) {
  const invocationId = randomUUID();
  const log = (...args) => console.log(...args);
  for (const level of ['error', 'warn', 'info', 'verbose']) log[level] = (...args) => console.log(...args);
  return {
    invocationId,
    executionContext: { invocationId, functionName, functionDirectory: '' },
    bindings: { req },
    bindingData: { invocationId },
    traceContext: {},
    log,
    res: undefined,
  };
}

function azureAnswer(response) {
  if (response === null || typeof response !== 'object') {
    throw new WrongAnswer(`an azure handler answers through context.res or returns {status, body}; this one gave ${described(response)}`);
  }
  const status = Number(response.status ?? 200);
  if (isStreamed(response.body)) return new Shaped('azure', status, null, response.body);
  const body = response.jsonBody !== undefined ? JSON.stringify(response.jsonBody) : response.body;
  return new Shaped('azure', status, bodyBytes(body));
}

/** Run `call`; its value (awaited if a promise) to `then(value, wasPromise)`, a throw to `fail`. */
function settle(call, then, fail) {
  let returned;
  try {
    returned = call();
  } catch (error) {
    fail(error);
    return;
  }
  if (typeof returned?.then !== 'function') {
    Promise.resolve().then(() => then(returned, false)).catch(fail);
    return;
  }
  returned.then((value) => then(value, true)).catch(fail);
}

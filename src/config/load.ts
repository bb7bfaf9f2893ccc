// Builds the DaemonConfig from its three sources, strictest first to fail:
//   flags > PCACHED_* environment > --config FILE > schema defaults.
// Every source goes through a fresh convict instance validated with allowed:'strict', so a reload
// (SIGHUP) is just another call with the same ConfigSource.

import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { isAbsolute, resolve } from 'node:path';
import convict from 'convict';
import {
  CACHE_GROUPS, CACHE_KEYS, CACHE_LEAF_KEYS, DAEMON_KEYS, DAEMON_GROUPS, DAEMON_LEAF_KEYS, DATA_DIR_TOKEN, isLoopbackHost, keyInfo, MAX_STRIPES, MAX_UNIX_PATH_BYTES,
  cacheSchema, daemonSchema, isNbdUri, isReloadable, parseTcpAddress, schemaLeaves, valueAt,
} from '../../config/schema.js';
import type { RawCache, RawDaemon } from '../../config/schema.js';
import { PcachedError } from '../util/errors.js';
import { parseSize } from '../util/size.js';
import type { CacheConfig, DaemonConfig } from './types.js';
import { checkAccess } from './access.js';
import { parseSocketMode } from '../../config/access-schema.js';

/** `pcached start` flags, as commander hands them over (strings; booleans for switches). */
export interface StartFlags {
  config?: string;
  origin?: string;
  cache?: string;
  cacheSize?: string;
  unix?: string;
  tcp?: string;
  name?: string;
  mode?: string;
  stripes?: string;
  control?: string;
  readOnly?: boolean;
  format?: boolean;
  discardDirty?: boolean;
  logLevel?: string;
  dataCrc?: boolean;
  segmentSize?: string;
  gcPercent?: string;
  sequentialCutoff?: string;
  tls?: string;
  tlsCertificates?: string;
  tlsPsk?: string;
  tlsVerifyPeer?: boolean;
}

/** Everything a load depends on; kept so that SIGHUP can load again from the same sources. */
export interface ConfigSource {
  /** --config, else $PCACHED_CONFIG; relative to cwd. */
  configFile?: string;
  env: Readonly<Record<string, string | undefined>>;
  flags: StartFlags;
  cwd: string;
}

export interface LoadedConfig {
  config: DaemonConfig;
  source: ConfigSource;
  /** Absolute path of the config file, if any (SIGHUP has nothing to re-read without one). */
  configFile?: string;
  /** No config file caches, no --origin / PCACHED_ORIGIN: the origin may be created. */
  embeddedDefault: boolean;
  /** Keys whose value came from a flag or the environment (they shadow the file, also on reload). */
  overrides: string[];
  /** Cache name → dotted key → where its value came from (`config file`, `flag --x`, `environment X`); absent: the default. */
  keySources: Record<string, Record<string, string>>;
}

export interface ConfigDiff {
  changed: string[];
  reloadable: boolean;
  /** Changed keys that need a restart. */
  rejected: string[];
  /** Caches (by name) with a changed reloadable key: the ones to send `reconfigure`. */
  changedCaches: string[];
}

// The flags come from the schema's `flag` property; commander hands `--cache-size` over as
// `cacheSize`, the schema key (test/config-reference.test.ts checks the two agree).
const flagKeys = (schema: object): (keyof StartFlags)[] =>
  schemaLeaves(schema).filter(([, info]) => info.flag !== undefined).map(([k]) => k as keyof StartFlags);
const CACHE_FLAGS = flagKeys(cacheSchema('single', true));
const DAEMON_FLAGS = flagKeys(daemonSchema());
const FLAG_NAMES: Record<string, string> = Object.fromEntries(
  [...schemaLeaves(daemonSchema()), ...schemaLeaves(cacheSchema('single', true))]
    .filter(([, info]) => info.flag !== undefined)
    .map(([k, info]) => [k, info.flag!]),
);
/** JSON keys that would reach Object.prototype through a careless merge; refused outright. */
const FORBIDDEN_KEYS = new Set(['__proto__', 'constructor', 'prototype']);
const COMMENT_KEY = '$comment';

function envName(info: unknown): string | undefined {
  return (info as { env?: string }).env;
}

/** The single-cache environment variables (PCACHED_ORIGIN, ...) that are set. */
function cacheEnvSet(env: ConfigSource['env'], flags: StartFlags): string[] {
  return schemaLeaves(cacheSchema('single', true))
    .filter(([k]) => flags[k as keyof StartFlags] === undefined)
    .map(([, info]) => envName(info))
    .filter((n): n is string => n !== undefined && env[n] !== undefined);
}

function readConfigFile(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const why = e.code === 'ENOENT' ? 'no such file' : e.code === 'EISDIR' ? 'is a folder' : e.message;
    throw new PcachedError('ERR_CONFIG', `config file ${path}: ${why}`, { cause: err });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new PcachedError('ERR_CONFIG', `config file ${path}: invalid JSON ${jsonErrorPlace(text, (err as Error).message)}; fix the file and start again (or send SIGHUP again to reload)`, { cause: err });
  }
  if (!isPlainObject(parsed)) {
    throw new PcachedError('ERR_CONFIG', `config file ${path}: must hold a JSON object with daemon keys and a "caches" array`);
  }
  const problems: string[] = [];
  rejectForbiddenKeys(parsed, '', problems);
  if (problems.length) throw new PcachedError('ERR_CONFIG', `config file ${path}: ${problems.join('; ')}`);
  return parsed;
}

/**
 * "at line 3, column 2: Expected ',' or '}' after property value" from V8's "... in JSON at
 * position 11" (an editor counts lines, not bytes); the end of the text when V8 names no place.
 */
export function jsonErrorPlace(text: string, message: string): string {
  const m = /\s*in JSON at position (\d+)(?: \(line \d+ column \d+\))?/.exec(message);
  const quoted = /^(Unexpected token .*?), ".*" is not valid JSON$/s.exec(message);
  let pos = m ? Number(m[1]) : text.length;
  let what = m ? message.slice(0, m.index) + message.slice(m.index + m[0].length) : quoted ? quoted[1]! : message;
  if (!m && quoted) {
    // V8 quotes the text instead of a position here: the token it names, when it occurs once.
    const token = /Unexpected token '(.)'/.exec(quoted[1]!)?.[1];
    const at = token === undefined ? -1 : text.indexOf(token);
    if (at < 0 || text.indexOf(token!, at + 1) >= 0) return `(${what})`;
    pos = at;
  }
  if (what === 'Unexpected end of JSON input') what = 'the text ends before the JSON value does';
  const before = text.slice(0, pos);
  const line = before.split('\n').length;
  const column = pos - (before.lastIndexOf('\n') + 1) + 1;
  return `at line ${line}, column ${column}: ${what}`;
}

function isPlainObject(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

function rejectForbiddenKeys(x: unknown, at: string, problems: string[]): void {
  if (Array.isArray(x)) {
    x.forEach((v, i) => rejectForbiddenKeys(v, `${at}[${i}]`, problems));
  } else if (isPlainObject(x)) {
    for (const k of Object.keys(x)) {
      const path = at ? `${at}.${k}` : k;
      if (FORBIDDEN_KEYS.has(k)) problems.push(`${path}: key "${k}" is not allowed`);
      else rejectForbiddenKeys(x[k], path, problems);
    }
  }
}

/**
 * Keeps the keys convict can judge: drops `$comment`, reports unknown keys and non-scalar values
 * (convict would flatten `{"origin": {...}}` into a confusing "missing from config"). A group
 * (`"autocommit": {"timeMs": 1000}`) must be an object and is screened the same way, one level down.
 */
function screenKeys(obj: Record<string, unknown>, known: readonly string[], prefix: string, problems: string[], groups: Readonly<Record<string, readonly string[]>> = {}): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(obj)) {
    const key = `${prefix}${k}`;
    if (k === COMMENT_KEY) {
      if (typeof v !== 'string') problems.push(`${key}: must be a string (a comment)`);
      continue;
    }
    if (!known.includes(k)) {
      problems.push(`${key}: not a known key (allowed: ${known.join(', ')}): value was ${JSON.stringify(v)}`);
      continue;
    }
    const group = Object.hasOwn(groups, k) ? groups[k] : undefined;
    if (group !== undefined) {
      if (!isPlainObject(v)) {
        problems.push(`${key}: must be an object with the keys ${group.join(', ')} (e.g. {"${group[0]}": ...}): value was ${JSON.stringify(v)}`);
        continue;
      }
      out[k] = screenKeys(v, group, `${key}.`, problems);
      continue;
    }
    if (v !== null && typeof v === 'object') {
      problems.push(`${key}: must be a string, number or boolean: value was ${JSON.stringify(v)}`);
      continue;
    }
    out[k] = v;
  }
  return out;
}

/** Cache keys without a default in a config file, and what they name. */
const REQUIRED_IN_FILE: readonly ['origin' | 'cache', string][] = [
  ['origin', 'origin (a file, a block device or an NBD URI: "origin": "/dev/sdb")'],
  ['cache', 'cache file or device ("cache": "/var/lib/pcached/vol.img")'],
];
const requiredEnv = (k: 'origin' | 'cache'): string => (k === 'origin' ? 'PCACHED_ORIGIN' : 'PCACHED_CACHE');

/**
 * A boolean in a JSON file is true or false: "yes" and "off" would pass convict's coercion (which
 * is there for the environment, where everything is a string) although the error text says
 * "must be true or false".
 */
const COERCED_BOOLEANS = new Set(['true', '1', 'yes', 'on', 'false', '0', 'no', 'off']);

function strictBooleans(obj: Record<string, unknown>, leaves: [string, { format?: unknown }][], prefix: string, problems: string[]): void {
  for (const [k, info] of leaves) {
    if (info.format !== 'pcached-boolean') continue;
    const v = valueAt(obj, k);
    // Other strings and numbers convict refuses by itself.
    if (typeof v === 'string' && COERCED_BOOLEANS.has(v.trim().toLowerCase())) problems.push(`${prefix}${k}: must be true or false (a JSON boolean, without quotes): value was ${JSON.stringify(v)}`);
  }
}

/** convict throws one Error with one problem per line; name each with its place in the file. */
function validateInto<T>(cfg: convict.Config<T>, prefix: string, problems: string[]): void {
  try {
    cfg.validate({ allowed: 'strict' });
  } catch (err) {
    for (const line of (err as Error).message.split('\n')) {
      if (!line) continue;
      const undeclared = /^configuration param '(.*)' not declared in the schema$/.exec(line);
      problems.push(undeclared ? `${prefix}${undeclared[1]}: not a known key` : `${prefix}${line}`);
    }
  }
}

function setFlags(cfg: convict.Config<unknown>, flags: StartFlags, keys: readonly (keyof StartFlags)[], overrides: string[], label: (k: string) => string): void {
  for (const k of keys) {
    const v = flags[k];
    if (v === undefined) continue;
    // set() coerces like the environment does, after it: flags win.
    cfg.set(k, v);
    overrides.push(label(k));
  }
}

export function loadConfig(source: ConfigSource): LoadedConfig {
  const { env, flags, cwd } = source;
  const problems: string[] = [];
  const overrides: string[] = [];
  const configPath = source.configFile ?? flags.config ?? env.PCACHED_CONFIG;
  const configFile = configPath === undefined || configPath === '' ? undefined : resolve(cwd, configPath);
  const file = configFile === undefined ? {} : readConfigFile(configFile);

  // Daemon-wide keys.
  const { caches: fileCaches, ...fileDaemon } = file;
  const daemonCfg = convict<RawDaemon>(daemonSchema(), { env: { ...env }, args: [] });
  // `caches` is taken out above but is as allowed as the others: the list says so.
  const screened = screenKeys(fileDaemon, [...DAEMON_KEYS, 'metrics', 'caches'], '', problems, DAEMON_GROUPS);
  strictBooleans(fileDaemon, schemaLeaves(daemonSchema()), '', problems);
  daemonCfg.load(screened);
  setFlags(daemonCfg as convict.Config<unknown>, flags, DAEMON_FLAGS, overrides, (k) => FLAG_NAMES[k] ?? k);
  for (const k of DAEMON_LEAF_KEYS) {
    const e = envName(keyInfo('daemon', k as 'control'));
    if (e !== undefined && env[e] !== undefined && flags[k as keyof StartFlags] === undefined) overrides.push(e);
  }
  validateInto(daemonCfg, '', problems);

  // Caches.
  const cacheEnv = cacheEnvSet(env, flags);
  const cacheFlagsSet = CACHE_FLAGS.filter((k) => flags[k] !== undefined);
  let rawCaches: RawCache[] = [];
  const sourcesOf: Record<string, string>[] = [];
  let embeddedDefault = false;
  if (fileCaches !== undefined && !Array.isArray(fileCaches)) {
    problems.push(`caches: must be an array of cache objects: value was ${JSON.stringify(fileCaches)}`);
  } else if (Array.isArray(fileCaches) && fileCaches.length === 0) {
    problems.push('caches: is empty: list at least one cache ({"name": "vol", "origin": "/dev/sdb", "cache": "/dev/nvme0n1p3", "unix": "/run/pcached/vol.sock"}), or leave "caches" out to serve the single cache of the flags and environment');
  } else if (fileCaches === undefined) {
    const c = convict<RawCache>(cacheSchema('single', true), { env: { ...env }, args: [] });
    setFlags(c as convict.Config<unknown>, flags, CACHE_FLAGS, overrides, (k) => FLAG_NAMES[k] ?? k);
    validateInto(c, '', problems);
    rawCaches = [c.getProperties()];
    sourcesOf.push(keySourcesOf({}, env, flags));
    embeddedDefault = flags.origin === undefined && env.PCACHED_ORIGIN === undefined;
  } else if (fileCaches.length > 1 && (cacheFlagsSet.length > 0 || cacheEnv.length > 0)) {
    const given = [...cacheFlagsSet.map((k) => FLAG_NAMES[k]), ...cacheEnv].join(', ');
    problems.push(`${given} set the keys of a single cache, but ${configFile} defines ${fileCaches.length} caches: set them in the file instead`);
  } else {
    const one = fileCaches.length === 1;
    fileCaches.forEach((element, i) => {
      const prefix = `caches[${i}].`;
      if (!isPlainObject(element)) {
        problems.push(`caches[${i}]: must be an object with the cache keys: value was ${JSON.stringify(element)}`);
        return;
      }
      // With one cache in the file the single-cache flags and environment refine it.
      const c = convict<RawCache>(cacheSchema('file', one), { env: one ? { ...env } : {}, args: [] });
      c.load(screenKeys(element, CACHE_KEYS, prefix, problems, CACHE_GROUPS));
      strictBooleans(element, schemaLeaves(cacheSchema('file', false)), prefix, problems);
      if (one) {
        setFlags(c as convict.Config<unknown>, flags, CACHE_FLAGS, overrides, (k) => FLAG_NAMES[k] ?? k);
      }
      // A key with no default in a file must be there; convict would call it "empty".
      const missing = REQUIRED_IN_FILE.filter(([k]) => !Object.hasOwn(element, k) && !(one && (flags[k] !== undefined || env[requiredEnv(k)] !== undefined)));
      const own: string[] = [];
      validateInto(c, prefix, own);
      problems.push(...own.filter((p) => !missing.some(([k]) => p.startsWith(`${prefix}${k}:`))));
      for (const [k, what] of missing) problems.push(`${prefix}${k}: is missing: every cache in a config file names its ${what}`);
      rawCaches.push(c.getProperties());
      sourcesOf.push(keySourcesOf(element, one ? env : {}, one ? flags : {}));
    });
  }
  if (fileCaches === undefined || (Array.isArray(fileCaches) && fileCaches.length <= 1)) overrides.push(...cacheEnv);
  if (problems.length) throw configError(problems, configFile);

  const daemon = daemonCfg.getProperties();
  const dataDir = resolve(cwd, daemon.dataDir);
  const path = (p: string): string => {
    const expanded = p.startsWith(DATA_DIR_TOKEN) ? dataDir + p.slice(DATA_DIR_TOKEN.length) : p;
    return isAbsolute(expanded) ? resolve(expanded) : resolve(cwd, expanded);
  };
  const metrics = metricsOf(daemon.metrics);
  if (typeof metrics === 'string') throw configError([metrics], configFile);
  const config: DaemonConfig = {
    control: path(daemon.control),
    controlMode: parseSocketMode(daemon.controlMode)!,
    controlGroup: daemon.controlGroup,
    logLevel: daemon.logLevel as DaemonConfig['logLevel'],
    dataDir,
    metrics,
    caches: rawCaches.map((raw) => resolveCache(raw, path)),
  };
  checkAcrossCaches(config, !(Array.isArray(fileCaches) && fileCaches.length > 0), problems);
  if (problems.length === 0) checkAccess(config, !(Array.isArray(fileCaches) && fileCaches.length > 0), problems);
  if (problems.length) throw configError(problems, configFile);
  const keySources = Object.fromEntries(config.caches.map((c, i) => [c.name, sourcesOf[i] ?? {}]));
  return { config, source: { ...source, configFile }, configFile, embeddedDefault, overrides, keySources };
}

/** Where each cache key's value comes from: the file element, then the environment, then a flag (the winner). */
function keySourcesOf(element: Record<string, unknown>, env: ConfigSource['env'], flags: StartFlags): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, info] of schemaLeaves(cacheSchema('single', true))) {
    if (valueAt(element, k) !== undefined) out[k] = 'config file';
    const e = envName(info);
    if (e !== undefined && env[e] !== undefined) out[k] = `environment ${e}`;
    if (info.flag !== undefined && flags[k as keyof StartFlags] !== undefined) out[k] = `flag ${info.flag}`;
  }
  return out;
}

function configError(problems: string[], configFile: string | undefined): PcachedError {
  const where = configFile ? ` (config file ${configFile})` : '';
  // One line: the CLI prints errors as a single `pcached: ...` line.
  return new PcachedError('ERR_CONFIG', `invalid configuration${where}: ${problems.join('; ')}`);
}

/**
 * 0 = one stripe per core but one: the coordinator thread (sockets, parsing, replies) needs a
 * core of its own. Measured on 2 cores: one stripe beats two at QD1 (a second stripe sleeps on
 * the other vCPU and every other request pays its wake-up) and at QD32 (two stripes contend
 * with the client and the coordinator for the cores).
 */
export function resolveStripes(stripes: number): number {
  return stripes === 0 ? Math.max(1, Math.min(availableParallelism() - 1, MAX_STRIPES)) : stripes;
}

function resolveCache(raw: RawCache, path: (p: string) => string): CacheConfig {
  return {
    name: raw.name,
    origin: isNbdUri(raw.origin) ? raw.origin : path(raw.origin),
    cache: path(raw.cache),
    cacheSize: parseSize(raw.cacheSize),
    mode: raw.mode as CacheConfig['mode'],
    unix: raw.unix === '' ? '' : path(raw.unix),
    tcp: raw.tcp,
    unixMode: parseSocketMode(raw.unixMode)!,
    unixGroup: raw.unixGroup,
    tls: raw.tls as CacheConfig['tls'],
    tlsCertificates: raw.tlsCertificates === '' ? '' : path(raw.tlsCertificates),
    tlsPsk: raw.tlsPsk === '' ? '' : path(raw.tlsPsk),
    tlsVerifyPeer: raw.tlsVerifyPeer,
    allowRemotePlaintext: raw.allowRemotePlaintext,
    stripes: resolveStripes(raw.stripes),
    readOnly: raw.readOnly,
    description: raw.description,
    format: raw.format,
    discardDirty: raw.discardDirty,
    originTimeoutMs: raw.originTimeoutMs,
    originConnections: raw.originConnections,
    originQueueDepth: raw.originQueueDepth,
    cacheDirectIo: raw.cacheDirectIo as CacheConfig['cacheDirectIo'],
    cacheQueueDepth: raw.cacheQueueDepth,
    slabSize: parseSize(raw.slabSize),
    maxConnections: raw.maxConnections,
    dataCrc: raw.dataCrc,
    segmentSize: parseSize(raw.segmentSize),
    gcPercent: raw.gcPercent,
    sequentialCutoff: parseSize(raw.sequentialCutoff),
    autocommit: { timeMs: raw.autocommit.timeMs, blocks: raw.autocommit.blocks },
    writeback: { rate: parseSize(raw.writeback.rate), jobs: raw.writeback.jobs },
    cacheFullWaitMs: raw.cacheFullWaitMs,
    pauseWritebackMs: raw.pauseWritebackMs,
    highWatermark: raw.highWatermark,
    lowWatermark: raw.lowWatermark,
    maxAgeMs: raw.maxAgeMs,
    promotion: raw.promotion,
    cleaner: raw.cleaner,
  };
}

function metricsOf(raw: RawDaemon['metrics']): DaemonConfig['metrics'] | string {
  if (raw.listen === '') return { listen: null, allowRemote: raw.allowRemote };
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(raw.listen)!;
  const host = (m[1] ?? m[2])!;
  if (!isLoopbackHost(host) && !raw.allowRemote) {
    return `metrics.listen: ${host} is not a loopback address; the metrics are not authenticated, so set metrics.allowRemote to true to listen there: value was ${JSON.stringify(raw.listen)}`;
  }
  return { listen: { host, port: Number(m[3]) }, allowRemote: raw.allowRemote };
}

/** Rules that need more than one value: uniqueness, listeners, path lengths. */
function checkAcrossCaches(config: DaemonConfig, single: boolean, problems: string[]): void {
  const at = (i: number, key: string): string => (single ? key : `caches[${i}].${key}`);
  const seen = new Map<string, string>();
  const claim = (kind: string, value: string, where: string): void => {
    const k = `${kind}\0${value}`;
    const first = seen.get(k);
    if (first !== undefined) problems.push(`${where}: ${JSON.stringify(value)} is already used by ${first}`);
    else seen.set(k, where);
  };
  config.caches.forEach((c, i) => {
    if (c.lowWatermark > c.highWatermark) {
      problems.push(`${at(i, 'lowWatermark')}: must not be above highWatermark (${c.highWatermark}): value was ${c.lowWatermark}`);
    }
    if (c.discardDirty && !c.format) {
      problems.push(`${at(i, 'discardDirty')}: only applies together with format (--format --discard-dirty): value was true`);
    }
  });
  const socketPath = (p: string, where: string): void => {
    const bytes = Buffer.byteLength(p);
    if (bytes > MAX_UNIX_PATH_BYTES) {
      problems.push(`${where}: socket path is ${bytes} bytes once resolved, Unix sockets allow ${MAX_UNIX_PATH_BYTES}: value was ${JSON.stringify(p)}`);
    }
    claim('socket', p, where);
  };
  socketPath(config.control, 'control');
  config.caches.forEach((c, i) => {
    claim('name', c.name, at(i, 'name'));
    if (c.unix === '' && c.tcp === '') problems.push(`${single ? 'unix, tcp' : `caches[${i}]`}: a cache needs at least one listener (unix or tcp)`);
    if (c.unix !== '') socketPath(c.unix, at(i, 'unix'));
    if (c.tcp !== '') {
      const addr = parseTcpAddress(c.tcp);
      if (addr && addr.port !== 0) claim('tcp', `${addr.host.toLowerCase()}:${addr.port}`, at(i, 'tcp'));
    }
  });
  // A cache file belongs to one cache; an origin may be shared only when every user is read-only
  // (two writers through two caches would corrupt it).
  const users = new Map<string, { where: string; role: 'cache' | 'origin'; readOnly: boolean }[]>();
  config.caches.forEach((c, i) => {
    for (const role of ['cache', 'origin'] as const) {
      const list = users.get(c[role]) ?? [];
      list.push({ where: at(i, role), role, readOnly: c.readOnly });
      users.set(c[role], list);
    }
  });
  for (const [file, list] of users) {
    if (list.length < 2) continue;
    if (list.every((u) => u.role === 'origin' && u.readOnly)) continue;
    problems.push(`${list.map((u) => u.where).join(' and ')}: ${JSON.stringify(file)} is used more than once (only read-only caches may share an origin)`);
  }
}

export function diffConfig(old: DaemonConfig, next: DaemonConfig): ConfigDiff {
  const changed: string[] = [];
  const rejected: string[] = [];
  const changedCaches: string[] = [];
  const note = (key: string, reloadable: boolean): void => {
    changed.push(key);
    if (!reloadable) rejected.push(key);
  };
  for (const k of DAEMON_KEYS) if (old[k] !== next[k]) note(k, isReloadable('daemon', k));
  if (JSON.stringify(old.metrics) !== JSON.stringify(next.metrics)) note('metrics', false);
  const before = new Map(old.caches.map((c) => [c.name, c]));
  const after = new Map(next.caches.map((c) => [c.name, c]));
  for (const name of before.keys()) if (!after.has(name)) note(`caches[${name}] (removed)`, false);
  for (const [name, c] of after) {
    const prev = before.get(name);
    if (!prev) {
      note(`caches[${name}] (added)`, false);
      continue;
    }
    let reconfigure = false;
    // Key by key, a group's keys by their dotted names: `autocommit.timeMs` is reloadable when
    // the group `autocommit` is.
    for (const k of CACHE_LEAF_KEYS) {
      if (valueAt(prev, k) === valueAt(c, k)) continue;
      const ok = isReloadable('cache', k);
      note(`caches[${name}].${k}`, ok);
      reconfigure ||= ok;
    }
    if (reconfigure) changedCaches.push(name);
  }
  return { changed, reloadable: rejected.length === 0, rejected, changedCaches };
}

/** The environment variables pcached reads, for `--help`. */
export function environmentVariables(): string[] {
  const names = [...schemaLeaves(daemonSchema()), ...schemaLeaves(cacheSchema('single', true))].map(([, info]) => envName(info));
  return ['PCACHED_CONFIG', ...names.filter((n): n is string => n !== undefined)];
}

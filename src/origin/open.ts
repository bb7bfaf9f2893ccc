// The origin is chosen by its form: an NBD URI is a remote export, anything else a local
// file or block device.

import type { Origin, OriginSpec } from './types.js';
import type { CacheConfig } from '../config/types.js';
import { openFileOrigin } from './file.js';
import { openNbdOrigin, probeNbdOrigin } from './nbd.js';
import { isUri } from '../nbd/uri.js';


export function originSpecFor(cache: Pick<CacheConfig, 'origin' | 'readOnly' | 'originTimeoutMs' | 'originConnections' | 'originQueueDepth'>): OriginSpec {
  if (isUri(cache.origin)) {
    return { kind: 'nbd', uri: cache.origin, readOnly: cache.readOnly, timeoutMs: cache.originTimeoutMs, connections: cache.originConnections };
  }
  return { kind: 'file', path: cache.origin, readOnly: cache.readOnly, queueDepth: cache.originQueueDepth };
}

export async function openOrigin(spec: OriginSpec): Promise<Origin> {
  return spec.kind === 'file' ? openFileOrigin(spec) : openNbdOrigin(spec);
}

export interface OriginFacts {
  size: number;
  readOnly: boolean;
  canFastZero: boolean;
  description: string;
}

/** What the coordinator must know before it listens: size and capabilities. */
export async function probeOrigin(spec: OriginSpec): Promise<OriginFacts> {
  if (spec.kind === 'file') {
    const o = openFileOrigin(spec);
    try {
      return { size: o.size, readOnly: o.readOnly, canFastZero: o.canFastZero, description: o.description };
    } finally {
      await o.close();
    }
  }
  const p = await probeNbdOrigin(spec.uri, spec.timeoutMs);
  return { size: p.size, readOnly: spec.readOnly || p.readOnly, canFastZero: p.canFastZero, description: spec.uri };
}

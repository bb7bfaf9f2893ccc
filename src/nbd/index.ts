// The NBD wire codec: bytes in, typed values out; typed values in, bytes out. No sockets.

export * from './constants.js';
export * from './handshake.js';
export * from './transmission.js';
export * from './client.js';
export { ChunkQueue } from './chunk-queue.js';
export { BufferBuilder } from './buffer-builder.js';
export * from './uri.js';

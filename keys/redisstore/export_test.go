package redisstore

// TouchChunk is touchChunk for the tests of package redisstore_test.
const TouchChunk = touchChunk

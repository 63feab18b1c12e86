// Package guard holds the bounds and normalisation keygate applies to
// hostile input before anything else looks at it: the one canonical request
// path that rules are matched against and the upstream receives, the
// recognition of identity-header spellings, the client address behind
// trusted proxies and the X-Forwarded-For sent upstream, a limiter of failed
// authentications with a memory of credentials an address already proved,
// and a memory of secrets the store said do not exist.
//
// It is used by the decision (gate) and by the fronts. Everything here is
// pure and self-contained: time is an argument, memory is bounded by a size
// fixed at construction, nothing starts a goroutine, and no function panics
// on input. It imports no other keygate package and nothing from net/http,
// so that each piece can be reasoned about and fuzzed on its own.
//
// Bounds, with their defaults:
//   - X-Forwarded-For: at most MaxForwardedEntries (64) entries and
//     MaxForwardedBytes (4 KiB) are read, from the right;
//   - KEYGATE_TRUSTED_PROXIES: at most MaxTrustedProxies (256) entries;
//   - KEYGATE_AUTH_FAIL_LIMIT: DefaultFailLimit "20/10s", a count up to
//     MaxFailLimit, a window from MinFailWindow (1s) to MaxFailWindow (24h);
//   - FailLimiter: DefaultFailEntries (16,384) clients with failures, about
//     2 MiB, and DefaultProvenEntries (65,536) proven pairs, 512 KiB;
//   - UnknownSecrets: DefaultUnknownSecrets (65,536) secrets, 512 KiB, at
//     most 8Mi whatever is asked.
package guard

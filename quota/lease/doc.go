// Package lease is a quota.Counter that admits most requests without a
// Redis round trip: a sidecar reserves a block of an organization's request
// quota in one atomic script call (rediscounter.Counter.Lease), admits from
// it locally and renews it in the background before it runs out.
// docs/quota-leases.md states the algorithm, its bounds and its failure
// behaviour; in short:
//
//   - A block is booked into the org counter when it is reserved, so units
//     lost with a sidecar (kill -9) or with a lost reply count as used,
//     never as free. A block is at most 1/Share of the free units and sized
//     to about Span of the observed traffic, so blocks shrink to one unit,
//     which is charging per request, as a quota nears its end.
//   - One block serves every key of the organization that has no max of its
//     own; each key's requests are counted exactly and sent off the request
//     path, with the next call for the organization, as this holder's held
//     counts: one field per organization and window for all its keys, so
//     the Redis cost grows with the calls, not with the keys. They are
//     folded into the shared hash of per-key counts rarely (held.go).
//   - Unspent units go back to the same window at most IdleReturn+Tick after
//     a block went idle (sooner when it was granted smaller than asked), at
//     Close, and when the org's max changes. A settlement (per-key counts
//     held or folded, and units back) is numbered and applied once, so a
//     retry after a lost reply never gives back or books twice.
//   - A charge refused for want of free units while other holders may hold
//     unspent ones (they tell Redis what they hold) waits for them, up to
//     RefusalWait and never past its deadline; the holders learn of the
//     refusal from Redis within a Tick or so and give back what they hold.
//   - A key with a max of its own reserves key blocks from its own counter
//     and its organization's in one call (rediscounter.Counter.KeyLease),
//     booked into both at once (keyblock.go).
//   - A charge's rate limits lease too (ratelimit.go): blocks of
//     consecutive GCRA slots reserved in Redis (ratelease.lua), spent with a
//     local TAT no earlier than a slot starts and no later than the burst
//     tolerance allows, so the fleet never admits more than one GCRA would.
//   - A charge the package cannot express exactly goes per request through
//     the wrapped rediscounter.Counter: one with a token, a nonce, or cost 0,
//     one whose key has both a max of its own and a rate limit, and a cold
//     key's with a max. Such a charge carries a token of its own, so a retry
//     after a lost reply counts once.
//   - While Redis is unreachable, charges are admitted from the block held,
//     exactly counted; past it they fail with quota.ErrUnavailable, and the
//     caller's failure mode applies.
package lease

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
//     own; each key's requests are booked exactly, in batches (a hash of
//     per-key counts, one call for many keys), off the request path.
//   - Unspent units go back to the same window at most IdleReturn+Tick after
//     a block went idle (sooner when it was granted smaller than asked), at
//     Close, and when the org's max changes. A settlement (per-key counts
//     and units back) is numbered and applied once, so a retry after a lost
//     reply never gives back or books twice.
//   - A charge's rate limits lease too (ratelimit.go): blocks of
//     consecutive GCRA slots reserved in Redis (ratelease.lua), spent with a
//     local TAT no earlier than a slot starts and no later than the burst
//     tolerance allows, so the fleet never admits more than one GCRA would.
//   - A charge the package cannot express exactly goes per request through
//     the wrapped rediscounter.Counter: one with a token, a nonce, a key
//     max, or cost 0. Such a charge carries a token of its own, so a retry
//     after a lost reply counts once.
//   - While Redis is unreachable, charges are admitted from the block held,
//     exactly counted; past it they fail with quota.ErrUnavailable, and the
//     caller's failure mode applies.
package lease

// Package quota is counting and limiting: periods and their windows (pure,
// time passed in), the Counter contract both adapters implement, the charge
// and its result, and typed errors.
//
// The rule: a charge of cost c is admitted iff key_usage+c <= key_max (when
// the key has a max) and org_usage+c <= org_max (unless unlimited); admitted,
// both counters grow by c at once; refused, neither changes. Rate limits
// (RateLimit, GCRA) join the same decision: the charge must also fit every
// rate limit that is not a shadow, and an admitted charge advances them all
// (and every shadow limit that would have allowed it) in the same step.
//
// quota/memcounter and quota/rediscounter implement Counter; quota/countertest
// is the conformance suite both pass.
package quota

// Package redisfail tells a Redis that cannot serve now from a Redis that
// answered, for both Redis adapters (keys/redisstore, quota/rediscounter),
// so the key store and the counter agree on what "store unavailable" means.
package redisfail

import (
	"errors"

	"github.com/redis/go-redis/v9"
)

// Unavailable reports whether err from a go-redis call means the store could
// not serve the call now: anything that is not a server reply (network
// errors, timeouts, context deadlines, pool exhaustion, a closed client), or
// a reply that says so (LOADING, CLUSTERDOWN, TRYAGAIN, MASTERDOWN, max
// clients, READONLY during a failover, BUSY with a script). redis.Nil and
// other replies are answers, not outages.
func Unavailable(err error) bool {
	if err == nil || errors.Is(err, redis.Nil) {
		return false
	}
	var reply redis.Error
	if !errors.As(err, &reply) {
		return true
	}
	return redis.IsLoadingError(err) || redis.IsClusterDownError(err) || redis.IsTryAgainError(err) ||
		redis.IsMasterDownError(err) || redis.IsMaxClientsError(err) || redis.IsReadOnlyError(err) ||
		redis.HasErrorPrefix(err, "BUSY")
}

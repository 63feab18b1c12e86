package main

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/caarlos0/env/v11"

	"github.com/keygate/keygate/guard"
)

// envPrefix starts every configuration variable.
const envPrefix = "KEYGATE_"

// config is keygate's configuration, read from KEYGATE_* environment
// variables. config.example.env documents each one; a test keeps the two in
// sync.
type config struct {
	// ListenAddr serves the data path and the self-served user routes.
	ListenAddr string `env:"LISTEN_ADDR" envDefault:":8000"`
	// UpstreamURL is the backend, e.g. http://127.0.0.1:8080. Required
	// unless keygate runs as an authorization service only (authzOnly).
	UpstreamURL url.URL `env:"UPSTREAM_URL"`
	// AuthzAddr serves the HTTP authorization endpoint (nginx auth_request,
	// Traefik ForwardAuth, Envoy HTTP ext_authz); empty = off.
	AuthzAddr string `env:"AUTHZ_ADDR"`
	// RedisURL is a redis:// or rediss:// URL; empty means the embedded
	// in-memory store. Extra addr= query parameters make it a cluster URL.
	RedisURL string `env:"REDIS_URL"`
	// AdminAddr serves the operator API.
	AdminAddr string `env:"ADMIN_ADDR" envDefault:"127.0.0.1:9091"`
	// AdminToken guards the operator API; empty turns it off.
	AdminToken string `env:"ADMIN_TOKEN"`
	// MetricsAddr serves /metrics, /healthz and /readyz.
	MetricsAddr string `env:"METRICS_ADDR" envDefault:":9090"`
	// FailureMode is open (admit verified keys uncounted while the store is
	// unreachable) or closed (503).
	FailureMode string `env:"FAILURE_MODE" envDefault:"open"`
	// StaleAuth is how long a key verified earlier is trusted from the cache
	// while the store is unreachable.
	StaleAuth time.Duration `env:"STALE_AUTH" envDefault:"15m"`
	// RedisTimeout bounds each store call on the request path.
	RedisTimeout time.Duration `env:"REDIS_TIMEOUT" envDefault:"250ms"`
	// QuotaLeases is auto (admit from blocks of the quota reserved in
	// Redis, see quota/lease) or off (one charge per request).
	QuotaLeases string `env:"QUOTA_LEASES" envDefault:"auto"`
	// UpstreamTimeout bounds the wait for the upstream's response headers.
	UpstreamTimeout time.Duration `env:"UPSTREAM_TIMEOUT" envDefault:"60s"`
	// PartnerTSSkew is the allowed distance of a ts parameter from now.
	PartnerTSSkew time.Duration `env:"PARTNER_TS_SKEW" envDefault:"5m"`
	// RoutesFile holds route rules (permission and cost per route).
	RoutesFile string `env:"ROUTES_FILE"`
	// SecretKey (base64, 32 bytes) encrypts signing secrets at rest; empty
	// turns signed requests off.
	SecretKey string `env:"SECRET_KEY"`
	// SecretKeyPrevious (base64, 32 bytes) still decrypts secrets sealed
	// under the key in use before the last rotation.
	SecretKeyPrevious string `env:"SECRET_KEY_PREVIOUS"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `env:"LOG_LEVEL" envDefault:"info"`
	// LogFormat is json or console.
	LogFormat string `env:"LOG_FORMAT" envDefault:"json"`
	// AuthCacheTTL is the longest a cached key is trusted without being
	// confirmed: by the change log, which confirms every entry at once in
	// the background, or else by a store read.
	AuthCacheTTL time.Duration `env:"AUTH_CACHE_TTL" envDefault:"5s"`
	// AuthCacheBytes bounds the heap of the credential cache (an estimate);
	// past it the least recently used keys are evicted.
	AuthCacheBytes int64 `env:"AUTH_CACHE_BYTES" envDefault:"67108864"`
	// GCHeadroom is how much the heap may grow between collections: no more
	// than the live heap (GOGC=100) and no less than half of it (gc.go). 0
	// leaves the collector to GOGC; GOGC or GOMEMLIMIT set win.
	GCHeadroom int64 `env:"GC_HEADROOM" envDefault:"8388608"`
	// MetricsMaxOrgs caps distinct org label values; later ones are "other".
	MetricsMaxOrgs int `env:"METRICS_MAX_ORGS" envDefault:"1000"`
	// Provider is the provider field of the stats routes.
	Provider string `env:"PROVIDER" envDefault:"keygate"`
	// ShutdownDelay is how long keygate keeps serving after SIGTERM with
	// /readyz failing, so load balancers stop routing to it before it stops
	// accepting connections.
	ShutdownDelay time.Duration `env:"SHUTDOWN_DELAY" envDefault:"0s"`
	// ShutdownTimeout bounds the drain of in-flight requests on SIGTERM.
	ShutdownTimeout time.Duration `env:"SHUTDOWN_TIMEOUT" envDefault:"25s"`
	// PathNormalize is what happens to a non-canonical request path:
	// rewrite it (as nginx does) or reject it with 400.
	PathNormalize string `env:"PATH_NORMALIZE" envDefault:"rewrite"`
	// AuthFailLimit bounds failed authentications per client address
	// ("20/10s"; off disables).
	AuthFailLimit string `env:"AUTH_FAIL_LIMIT" envDefault:"20/10s"`
	// LoginFailLimit bounds failed seed 003 password logins per username.
	LoginFailLimit string `env:"LOGIN_FAIL_LIMIT" envDefault:"5/1m"`
	// TrustedProxies are the peers (CIDRs or addresses) whose
	// X-Forwarded-For names the client.
	TrustedProxies string `env:"TRUSTED_PROXIES"`
	// MaxConnections bounds the open connections of each listener.
	MaxConnections int `env:"MAX_CONNECTIONS" envDefault:"10000"`
	// AuthzGRPCAddr serves Envoy's ext_authz over gRPC; empty = off.
	AuthzGRPCAddr string `env:"AUTHZ_GRPC_ADDR"`
}

// minAuthCacheBytes is the smallest credential cache: about a hundred keys.
const minAuthCacheBytes = 65536

// The parsed forms of settings validate checked.
func (c config) authFailLimit() guard.FailLimit {
	l, _ := guard.ParseFailLimit(c.AuthFailLimit)
	return l
}

func (c config) loginFailLimit() guard.FailLimit {
	l, _ := guard.ParseFailLimit(c.LoginFailLimit)
	return l
}

func (c config) trustedProxies() guard.TrustedProxies {
	t, _ := guard.ParseTrustedProxies(c.TrustedProxies)
	return t
}

// authzService reports whether keygate answers authorization checks (HTTP
// or gRPC), so that a data path (an upstream) is optional.
func (c config) authzService() bool { return c.AuthzAddr != "" || c.AuthzGRPCAddr != "" }

// loadConfig parses and validates the configuration from environ. Every
// problem is reported, each naming its variable.
func loadConfig(environ map[string]string) (config, error) {
	cfg, err := env.ParseAsWithOptions[config](env.Options{Prefix: envPrefix, Environment: environ})
	if err != nil {
		return config{}, rewriteEnvError(err)
	}
	if err := cfg.validate(); err != nil {
		return config{}, err
	}
	return cfg, nil
}

// hasUpstream reports whether KEYGATE_UPSTREAM_URL was set: without it
// keygate has no data path, only authorization services.
func (c config) hasUpstream() bool { return c.UpstreamURL != (url.URL{}) }

// validate collects every problem of an otherwise parsed configuration.
func (c config) validate() error {
	var errs []error
	bad := func(name, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s%s: %s", envPrefix, name, fmt.Sprintf(format, args...)))
	}
	switch {
	case !c.hasUpstream():
		if !c.authzService() {
			bad("UPSTREAM_URL", "required but not set (it is optional only with KEYGATE_AUTHZ_ADDR or KEYGATE_AUTHZ_GRPC_ADDR)")
		}
	case c.UpstreamURL.Scheme != "http" && c.UpstreamURL.Scheme != "https" || c.UpstreamURL.Host == "":
		bad("UPSTREAM_URL", "want an absolute http:// or https:// URL, got %q", c.UpstreamURL.String())
	}
	if c.AuthzGRPCAddr != "" && !validListenAddr(c.AuthzGRPCAddr) {
		bad("AUTHZ_GRPC_ADDR", "want host:port or :port with a port from 0 to 65535, got %q", c.AuthzGRPCAddr)
	}
	if c.RedisURL != "" {
		if u, err := url.Parse(c.RedisURL); err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") || u.Host == "" {
			bad("REDIS_URL", "want a redis:// or rediss:// URL with a host")
		}
	}
	if c.AuthzAddr != "" && !validListenAddr(c.AuthzAddr) {
		bad("AUTHZ_ADDR", "want host:port or :port with a port from 0 to 65535, got %q", c.AuthzAddr)
	}
	for name, addr := range map[string]string{"LISTEN_ADDR": c.ListenAddr, "ADMIN_ADDR": c.AdminAddr, "METRICS_ADDR": c.MetricsAddr} {
		if !validListenAddr(addr) {
			bad(name, "want host:port or :port with a port from 0 to 65535, got %q", addr)
		}
	}
	if c.FailureMode != "open" && c.FailureMode != "closed" {
		bad("FAILURE_MODE", "want open or closed, got %q", c.FailureMode)
	}
	if c.QuotaLeases != "auto" && c.QuotaLeases != "off" {
		bad("QUOTA_LEASES", "want auto or off, got %q", c.QuotaLeases)
	}
	for name, d := range map[string]time.Duration{"REDIS_TIMEOUT": c.RedisTimeout, "UPSTREAM_TIMEOUT": c.UpstreamTimeout,
		"PARTNER_TS_SKEW": c.PartnerTSSkew, "AUTH_CACHE_TTL": c.AuthCacheTTL, "SHUTDOWN_TIMEOUT": c.ShutdownTimeout} {
		if d <= 0 {
			bad(name, "must be a positive duration, got %s", d)
		}
	}
	if c.ShutdownDelay < 0 {
		bad("SHUTDOWN_DELAY", "must not be negative")
	}
	if c.StaleAuth < 0 {
		bad("STALE_AUTH", "must not be negative")
	}
	if c.AuthCacheBytes < minAuthCacheBytes {
		bad("AUTH_CACHE_BYTES", "must be at least %d", minAuthCacheBytes)
	}
	if c.GCHeadroom < 0 {
		bad("GC_HEADROOM", "must not be negative")
	}
	if c.MetricsMaxOrgs < 1 {
		bad("METRICS_MAX_ORGS", "must be at least 1")
	}
	for name, k := range map[string]string{"SECRET_KEY": c.SecretKey, "SECRET_KEY_PREVIOUS": c.SecretKeyPrevious} {
		if k == "" {
			continue
		}
		if b, err := base64.StdEncoding.DecodeString(k); err != nil || len(b) != 32 {
			bad(name, "want 32 bytes in standard base64 (openssl rand -base64 32)")
		}
	}
	if c.SecretKeyPrevious != "" && c.SecretKey == "" {
		bad("SECRET_KEY_PREVIOUS", "set without KEYGATE_SECRET_KEY")
	}
	if c.PathNormalize != "rewrite" && c.PathNormalize != "reject" {
		bad("PATH_NORMALIZE", "want rewrite or reject, got %q", c.PathNormalize)
	}
	for name, v := range map[string]string{"AUTH_FAIL_LIMIT": c.AuthFailLimit, "LOGIN_FAIL_LIMIT": c.LoginFailLimit} {
		if _, err := guard.ParseFailLimit(v); err != nil {
			bad(name, "%v", err)
		}
	}
	if _, err := guard.ParseTrustedProxies(c.TrustedProxies); err != nil {
		bad("TRUSTED_PROXIES", "%v", err)
	}
	if c.MaxConnections < 1 {
		bad("MAX_CONNECTIONS", "must be at least 1")
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("LOG_LEVEL", "want debug, info, warn or error, got %q", c.LogLevel)
	}
	if c.LogFormat != "json" && c.LogFormat != "console" {
		bad("LOG_FORMAT", "want json or console, got %q", c.LogFormat)
	}
	return errors.Join(errs...)
}

// validListenAddr reports whether addr is host:port or :port with a numeric
// port, as net.Listen takes it.
func validListenAddr(addr string) bool {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	n, err := strconv.ParseUint(port, 10, 16)
	return err == nil && n <= 65535
}

// rewriteEnvError turns caarlos0/env's errors, which name Go fields, into
// lines that name the KEYGATE_* variable and what is wrong with it.
func rewriteEnvError(err error) error {
	var agg env.AggregateError
	if !errors.As(err, &agg) {
		return fmt.Errorf("configuration: %w", err)
	}
	var out []error
	for _, e := range agg.Errors {
		var (
			parse  env.ParseError
			notSet env.VarIsNotSetError
			empty  env.EmptyVarError
		)
		switch {
		case errors.As(e, &parse):
			out = append(out, fmt.Errorf("%s: cannot parse as %s: %v", envName(parse.Name), describeType(parse.Type), errors.Unwrap(e)))
		case errors.As(e, &notSet):
			out = append(out, fmt.Errorf("%s: required but not set", notSet.Key))
		case errors.As(e, &empty):
			out = append(out, fmt.Errorf("%s: required but empty", empty.Key))
		default:
			out = append(out, e)
		}
	}
	return errors.Join(out...)
}

// envName returns the variable of a config field.
func envName(field string) string {
	f, ok := reflect.TypeFor[config]().FieldByName(field)
	if !ok {
		return field
	}
	name, _, _ := strings.Cut(f.Tag.Get("env"), ",")
	return envPrefix + name
}

func describeType(t reflect.Type) string {
	switch t {
	case reflect.TypeFor[time.Duration]():
		return "a duration (e.g. 250ms, 5m)"
	case reflect.TypeFor[url.URL]():
		return "a URL"
	case reflect.TypeFor[int]():
		return "an integer"
	default:
		return t.String()
	}
}

// Package sidecar wires keygate's packages into the handlers of its
// listeners: the decision (gate), the shared management operations
// (manage), the fronts (proxy, the self-served APIs, admin) and the meter
// book. routes.go lists the whole HTTP surface of the data listener.
// cmd/keygate picks the adapters and runs the listeners; tests build the
// same sidecar in-process.
package sidecar

import (
	"net/http"
	"net/url"
	"time"

	"go.uber.org/zap"

	"github.com/keygate/keygate/admin"
	"github.com/keygate/keygate/gate"
	"github.com/keygate/keygate/guard"
	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/listener"
	"github.com/keygate/keygate/manage"
	"github.com/keygate/keygate/meter"
	"github.com/keygate/keygate/metrics"
	"github.com/keygate/keygate/proxy"
	"github.com/keygate/keygate/quota"
	"github.com/keygate/keygate/selfserve/account"
	"github.com/keygate/keygate/selfserve/gw3"
	"github.com/keygate/keygate/selfserve/user"
)

// Options configure a Sidecar. Store, Auth and Counter are required.
type Options struct {
	// Upstream is the backend requests are forwarded to; nil = no data
	// path (keygate as an authorization service alone): requests for other
	// than the self-served routes get 404, before any decision.
	Upstream *url.URL
	Store    keys.Store
	Auth     *keys.Authenticator
	Counter  quota.Counter
	// RemoteCounter: the Counter is reached over the network (see
	// gate.Options.RemoteCounter).
	RemoteCounter bool
	Rules         gate.Rules
	// FailOpen admits verified keys uncounted while the store is
	// unreachable; otherwise such requests get 503.
	FailOpen bool
	// StoreTimeout bounds each store call on the request path (default 250ms).
	StoreTimeout time.Duration
	// UpstreamTimeout bounds the wait for the upstream's response headers
	// (default 60s).
	UpstreamTimeout time.Duration
	// WriteTimeout bounds the client's stalls (default 30s; see
	// proxy.Options.WriteTimeout).
	WriteTimeout time.Duration
	// TSSkew is how far the ts parameter of partner and signed requests may
	// be from now (default 5m).
	TSSkew time.Duration
	// Sealer seals the secrets of new keys so they can sign requests; nil
	// when signing is off. Auth must be built with the same Sealer.
	Sealer *keys.Sealer
	// Provider is the provider field of the stats routes (default keygate).
	Provider string
	// RejectNonCanonical refuses non-canonical paths instead of rewriting
	// them (KEYGATE_PATH_NORMALIZE=reject).
	RejectNonCanonical bool
	// FailLimit bounds failed authentications per client address, and
	// LoginFailLimit failed seed 003 logins per username; zero = off.
	FailLimit, LoginFailLimit guard.FailLimit
	// TrustedProxies are the peers whose X-Forwarded-For names the client.
	TrustedProxies guard.TrustedProxies
	// Toucher records when keys were last used; nil = not recorded.
	Toucher *keys.Toucher
	// AdminToken guards the operator API; empty = no operator API.
	AdminToken string
	// AdminPublic are operator-listener routes served without the token.
	AdminPublic map[string]http.Handler
	// Transport replaces the upstream transport (tests).
	Transport http.RoundTripper
	Log       *zap.Logger
	Metrics   *metrics.Metrics
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Sidecar is a wired keygate.
type Sidecar struct {
	// Data is the handler of the data listener.
	Data http.Handler
	// Admin is the handler of the operator listener; nil without a token.
	Admin http.Handler
	// Book is the meter book; run it (Book.Run) for usage to reach the
	// store.
	Book *meter.Book
	// Gate is the decision every front uses.
	Gate *gate.Decider
	// Manage runs the management operations.
	Manage *manage.Service
}

// New wires a Sidecar for o.
func New(o Options) *Sidecar {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	g := gate.New(gate.Options{
		Auth:           o.Auth,
		Counter:        o.Counter,
		RemoteCounter:  o.RemoteCounter,
		Rules:          o.Rules,
		FailOpen:       o.FailOpen,
		StoreTimeout:   o.StoreTimeout,
		TSSkew:         o.TSSkew,
		FailLimit:      o.FailLimit,
		TrustedProxies: o.TrustedProxies,
		Toucher:        o.Toucher,
		Log:            o.Log,
		Metrics:        o.Metrics,
		Now:            o.Now,
	})
	m := manage.New(manage.Options{
		Store:        o.Store,
		Auth:         o.Auth,
		Counter:      o.Counter,
		Sealer:       o.Sealer,
		StoreTimeout: o.StoreTimeout,
		Log:          o.Log,
		Now:          o.Now,
	})
	book := meter.NewBook(meter.Options{Counter: o.Counter, StoreTimeout: o.StoreTimeout, Log: o.Log, Metrics: o.Metrics})
	upstream := o.Upstream
	if upstream == nil {
		upstream = &url.URL{Scheme: "http", Host: "upstream.invalid"} // never used: see noDataPath
	}
	var data listener.Handler = proxy.New(proxy.Options{
		Upstream:        upstream,
		Gate:            g,
		Book:            book,
		UpstreamTimeout: o.UpstreamTimeout,
		WriteTimeout:    o.WriteTimeout,
		TrustedProxies:  o.TrustedProxies,
		Transport:       o.Transport,
		Log:             o.Log,
		Metrics:         o.Metrics,
		Now:             o.Now,
	})
	if o.Upstream == nil {
		data = noDataPath(o.Log)
	}
	routes := dataRoutes(
		account.New(account.Options{Gate: g, Manage: m, Log: o.Log}),
		gw3.New(gw3.Options{Gate: g, Manage: m, Provider: o.Provider, Log: o.Log}),
		user.New(user.Options{Gate: g, Manage: m, LoginFailLimit: o.LoginFailLimit, Log: o.Log}),
	)
	s := &Sidecar{
		Data: listener.New(listener.Options{
			Routes:             routes,
			Data:               data,
			UpstreamTimeout:    o.UpstreamTimeout,
			WriteTimeout:       o.WriteTimeout,
			RejectNonCanonical: o.RejectNonCanonical,
			Log:                o.Log,
			Metrics:            o.Metrics,
			Now:                o.Now,
		}),
		Book:   book,
		Gate:   g,
		Manage: m,
	}
	if o.AdminToken != "" {
		s.Admin = admin.New(admin.Options{Manage: m, Token: o.AdminToken, Public: o.AdminPublic, Log: o.Log})
	}
	return s
}

// noDataPath answers every request for an upstream when there is none: 404,
// nothing decided, nothing charged.
func noDataPath(log *zap.Logger) listener.HandlerFunc {
	err := &gate.ClientError{Status: http.StatusNotFound, Msg: "Not found: this keygate has no upstream (KEYGATE_UPSTREAM_URL); it answers authorization checks"}
	return func(w *listener.Writer, r *http.Request) { w.Fail(r, err, time.Now(), log) }
}

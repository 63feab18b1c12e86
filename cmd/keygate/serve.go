package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	kgate "github.com/keygate/keygate/gate"
	"github.com/keygate/keygate/guard"
	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/keys/memstore"
	"github.com/keygate/keygate/keys/redisstore"
	"github.com/keygate/keygate/metrics"
	"github.com/keygate/keygate/openapi"
	"github.com/keygate/keygate/quota"
	"github.com/keygate/keygate/quota/lease"
	"github.com/keygate/keygate/quota/memcounter"
	"github.com/keygate/keygate/quota/rediscounter"
	"github.com/keygate/keygate/sidecar"
)

// listeners are the bound addresses of a running sidecar.
type listeners struct {
	Data, Admin, Metrics string
	// Authz is the HTTP authorization endpoint's; empty when off.
	Authz string
	// AuthzGRPC is the gRPC ext_authz service's; empty when off.
	AuthzGRPC string
}

// serve runs the sidecar until ctx is done, then drains in-flight requests.
// ready, when set, is called with the bound addresses once all listeners
// accept connections.
func serve(ctx context.Context, cfg config, logOut io.Writer, ready func(listeners)) error {
	log, flushLog := newLogger(cfg, logOut)
	defer flushLog()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mtr := metrics.NewMetrics(reg, cfg.MetricsMaxOrgs)

	rules, err := kgate.LoadRules(cfg.RoutesFile)
	if err != nil {
		return fmt.Errorf("KEYGATE_ROUTES_FILE: %w", err)
	}

	sealer, err := newSealer(cfg)
	if err != nil {
		return err
	}

	st, err := openStores(cfg, log, mtr)
	if err != nil {
		return err
	}
	defer st.close()

	auth := keys.NewAuthenticator(st.keys, keys.AuthOptions{
		TTL:          cfg.AuthCacheTTL,
		StaleAuth:    cfg.StaleAuth,
		MaxBytes:     cfg.AuthCacheBytes,
		OnLookup:     mtr.AuthLookup,
		OnRevocation: mtr.Revocation,
		OnConfirm:    mtr.Revalidation,
		OnChangeLog:  mtr.ChangeLog,
		Unknown:      guard.NewUnknownSecrets(0),
		Sealer:       sealer,
	})
	mtr.AuthCacheStats(auth.CacheStats)
	toucher := keys.NewToucher(st.keys, keys.ToucherOptions{Timeout: cfg.RedisTimeout * 4})
	var upstream *url.URL // nil: no data path, authorization services only
	if cfg.hasUpstream() {
		u := cfg.UpstreamURL
		upstream = &u
	}
	sc := sidecar.New(sidecar.Options{
		Upstream:           upstream,
		Store:              st.keys,
		Auth:               auth,
		Counter:            st.counter,
		RemoteCounter:      st.remote,
		Rules:              rules,
		FailOpen:           cfg.FailureMode == "open",
		StoreTimeout:       cfg.RedisTimeout,
		UpstreamTimeout:    cfg.UpstreamTimeout,
		TSSkew:             cfg.PartnerTSSkew,
		Sealer:             sealer,
		Provider:           cfg.Provider,
		Toucher:            toucher,
		AdminToken:         cfg.AdminToken,
		AdminPublic:        map[string]http.Handler{"/openapi.json": openapi.Handler()},
		RejectNonCanonical: cfg.PathNormalize == "reject",
		FailLimit:          cfg.authFailLimit(),
		LoginFailLimit:     cfg.loginFailLimit(),
		TrustedProxies:     cfg.trustedProxies(),
		Log:                log,
		Metrics:            mtr,
	})

	var draining atomic.Bool
	servers := []*namedServer{
		{name: "data", env: "KEYGATE_LISTEN_ADDR", addr: cfg.ListenAddr, maxConns: cfg.MaxConnections, srv: &http.Server{
			Handler:           sc.Data,
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       120 * time.Second,
			MaxHeaderBytes:    64 << 10,
			// No WriteTimeout: streamed responses (SSE) may last; the
			// upstream timeout bounds the wait for headers, and each write
			// gets its own deadline (listener.Writer, proxy.Options.WriteTimeout).
			ErrorLog: zap.NewStdLog(log.Named("http")),
		}},
		{name: "metrics", env: "KEYGATE_METRICS_ADDR", addr: cfg.MetricsAddr, maxConns: cfg.MaxConnections, srv: &http.Server{
			Handler:           metricsMux(reg, st, &draining, cfg.RedisTimeout),
			ReadHeaderTimeout: 5 * time.Second,
			WriteTimeout:      30 * time.Second,
			IdleTimeout:       60 * time.Second,
		}},
	}
	if cfg.AdminToken != "" {
		servers = append(servers, &namedServer{name: "admin", env: "KEYGATE_ADMIN_ADDR", addr: cfg.AdminAddr, maxConns: cfg.MaxConnections, srv: &http.Server{
			Handler:           sc.Admin,
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       30 * time.Second,
			WriteTimeout:      30 * time.Second,
			IdleTimeout:       60 * time.Second,
		}})
	} else {
		log.Info("operator API off: KEYGATE_ADMIN_TOKEN is empty")
	}
	if cfg.AuthzAddr != "" {
		// Checks carry headers only (proxies send no body), so the
		// server-wide timeouts are short.
		servers = append(servers, &namedServer{name: "authz", env: "KEYGATE_AUTHZ_ADDR", addr: cfg.AuthzAddr, maxConns: cfg.MaxConnections, srv: &http.Server{
			Handler:           sc.Authz,
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       10 * time.Second,
			WriteTimeout:      10 * time.Second,
			IdleTimeout:       120 * time.Second,
			MaxHeaderBytes:    64 << 10,
			ErrorLog:          zap.NewStdLog(log.Named("http")),
		}})
	}

	authzGRPC := newAuthzGRPC(cfg, sc.Gate, log, mtr)
	for _, s := range servers {
		if err := s.listen(); err != nil {
			for _, o := range servers {
				o.close()
			}
			return err
		}
	}
	if err := authzGRPC.listen(); err != nil {
		for _, o := range servers {
			o.close()
		}
		return err
	}

	bg, stopBG := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBG()
	watchDone := make(chan struct{})
	go func() { defer close(watchDone); _ = auth.Run(bg) }()
	usageDone := make(chan struct{})
	go func() { defer close(usageDone); sc.Book.Run(bg) }()
	touchDone := make(chan struct{})
	go func() { defer close(touchDone); toucher.Run(bg) }()
	if gcTunable(cfg.GCHeadroom) {
		go tuneGC(bg, cfg.GCHeadroom, log)
	}

	errc := make(chan error, len(servers)+1)
	for _, s := range servers {
		go func() { errc <- s.serve() }()
		log.Info("listening", zap.String("listener", s.name), zap.String("addr", s.ln.Addr().String()))
	}
	upstreamField := "none (authorization services only)"
	if upstream != nil {
		upstreamField = redactURL(upstream)
	}
	authzGRPC.start(errc, log)
	log.Info("keygate started", zap.String("upstream", upstreamField), zap.String("store", st.kind), zap.String("quota_leases", cfg.QuotaLeases),
		zap.String("failure_mode", cfg.FailureMode), zap.Bool("signing", sealer != nil))
	logSigning(log, sealer)
	if n, err := releaseStartupPages(); err != nil {
		log.Debug("start-up pages kept", zap.Error(err))
	} else {
		log.Debug("start-up pages released", zap.Int64("bytes", n))
	}
	go releaseBinaryPagesEvery(bg, binaryReleaseEvery)
	if ready != nil {
		l := listeners{AuthzGRPC: authzGRPC.boundAddr()}
		for _, s := range servers {
			switch s.name {
			case "data":
				l.Data = s.ln.Addr().String()
			case "admin":
				l.Admin = s.ln.Addr().String()
			case "metrics":
				l.Metrics = s.ln.Addr().String()
			case "authz":
				l.Authz = s.ln.Addr().String()
			}
		}
		ready(l)
	}

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
		log.Error("listener failed", zap.Error(serveErr))
	}

	// Drain: report not ready, keep serving for ShutdownDelay while load
	// balancers (a Kubernetes Service's endpoints) stop sending new
	// requests, then stop accepting and wait for in-flight requests.
	draining.Store(true)
	authzGRPC.drain()
	if cfg.ShutdownDelay > 0 && serveErr == nil {
		log.Info("not ready; serving on until the shutdown delay ends", zap.Duration("delay", cfg.ShutdownDelay))
		t := time.NewTimer(cfg.ShutdownDelay)
		select {
		case <-t.C:
		case serveErr = <-errc:
			t.Stop()
		}
	}
	log.Info("shutting down", zap.Duration("timeout", cfg.ShutdownTimeout))
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
	defer cancel()
	var errs []error
	for _, s := range servers {
		if err := s.srv.Shutdown(sctx); err != nil {
			errs = append(errs, fmt.Errorf("shutting down %s listener: %w", s.name, err))
		}
	}
	if err := authzGRPC.shutdown(sctx); err != nil {
		errs = append(errs, err)
	}
	// Give back the unspent part of the quota blocks and book the counts,
	// now that no request is in flight; what a Redis outage keeps from
	// going back stays counted as used.
	lctx, lcancel := context.WithTimeout(sctx, leaseCloseTimeout)
	if err := st.closeCounter(lctx); err != nil {
		log.Warn("quota leases not all given back", zap.Error(err))
	}
	lcancel()
	stopBG()
	<-watchDone
	<-usageDone
	<-touchDone
	if serveErr != nil {
		errs = append(errs, serveErr)
	}
	log.Info("stopped")
	return errors.Join(errs...)
}

// leaseCloseTimeout bounds the return of the quota blocks at shutdown.
const leaseCloseTimeout = 2 * time.Second

// namedServer is one listener of the sidecar.
type namedServer struct {
	// env is the variable that configures addr, named in errors.
	name, env, addr string
	srv             *http.Server
	ln              net.Listener
	// maxConns bounds the open connections (0 = no bound).
	maxConns int
}

func (s *namedServer) listen() error {
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return fmt.Errorf("%s: %s listener on %s: %w", s.env, s.name, s.addr, err)
	}
	s.ln = ln
	if s.maxConns > 0 {
		s.ln = newLimitListener(ln, s.maxConns)
	}
	return nil
}

func (s *namedServer) serve() error {
	if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("%s listener: %w", s.name, err)
	}
	return nil
}

func (s *namedServer) close() {
	if s.ln != nil {
		_ = s.ln.Close()
	}
}

// binaryReleaseEvery is how often the binary's pages are given back again
// while serving (releaseBinaryPagesEvery).
const binaryReleaseEvery = 30 * time.Second

// releaseBinaryPagesEvery gives back the binary's read-only pages every
// period until ctx ends, as at start-up: what the request path uses is
// mapped back at its next use (a minor fault, from the page cache), what
// ran once since (an admin burst, a reconnect, a log line) and the
// neighbours the kernel mapped with it leave the resident set.
func releaseBinaryPagesEvery(ctx context.Context, period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := releaseStartupPages(); err != nil {
				return
			}
		}
	}
}

// metricsMux serves /metrics, /healthz (the process is alive) and /readyz
// (the store answers and the sidecar is not draining).
func metricsMux(reg *prometheus.Registry, st *stores, draining *atomic.Bool, timeout time.Duration) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if draining.Load() {
			http.Error(w, "draining", http.StatusServiceUnavailable)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 4*timeout)
		defer cancel()
		if err := st.ready(ctx); err != nil {
			http.Error(w, "store unreachable", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	return mux
}

// stores are the adapters picked by the configuration.
type stores struct {
	kind    string
	keys    keys.Store
	counter quota.Counter
	// remote: the counter charges over the network per request and needs
	// idempotency tokens (gate.Options.RemoteCounter); a lease counter
	// adds its own where it needs them.
	remote bool
	ready  func(context.Context) error
	// closeCounter gives back what the counter holds (leases).
	closeCounter func(context.Context) error
	close        func()
}

// openStores picks the embedded in-memory store or Redis.
func openStores(cfg config, log *zap.Logger, mtr *metrics.Metrics) (*stores, error) {
	if cfg.RedisURL == "" {
		log.Warn("KEYGATE_REDIS_URL is empty: using the embedded in-memory store (single process, not persisted)")
		return &stores{
			kind: "memory", keys: memstore.New(), counter: memcounter.New(),
			ready: func(context.Context) error { return nil }, close: func() {},
			closeCounter: func(context.Context) error { return nil },
		}, nil
	}
	rdb, err := newRedisClient(cfg.RedisURL, cfg.RedisTimeout)
	if err != nil {
		return nil, err
	}
	counter := rediscounter.New(rdb)
	ks := redisstore.New(rdb)
	st := &stores{kind: "redis", keys: ks, counter: counter, remote: true,
		closeCounter: func(context.Context) error { return nil }}
	if cfg.QuotaLeases == "auto" {
		// mtr is the leases' Observer and, for the rate limits, their
		// RateObserver too (checked below at compile time).
		lc := lease.New(counter, "", lease.Options{Timeout: cfg.RedisTimeout, Observer: mtr})
		st.counter, st.remote, st.closeCounter = lc, false, lc.Close
	}
	st.ready = func(ctx context.Context) error {
		if err := ks.Ping(ctx); err != nil {
			return err
		}
		return counter.Load(ctx)
	}
	st.close = func() { _ = rdb.Close() }
	return st, nil
}

// newRedisClient builds a client from a redis:// URL; addr= query
// parameters name further nodes and make it a cluster client. Every call
// honours its context's deadline.
func newRedisClient(rawURL string, timeout time.Duration) (redis.UniversalClient, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("KEYGATE_REDIS_URL: %w", err)
	}
	if u.Query().Has("addr") {
		opt, err := redis.ParseClusterURL(rawURL)
		if err != nil {
			return nil, fmt.Errorf("KEYGATE_REDIS_URL: %w", err)
		}
		opt.ContextTimeoutEnabled = true
		opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout = max(timeout, time.Second), timeout, timeout
		opt.PoolSize = max(opt.PoolSize, 64)
		opt.ReadBufferSize, opt.WriteBufferSize = redisBufferSize, redisBufferSize
		opt.PipelineReadBufferSize, opt.PipelineWriteBufferSize = redisPipelineBufferSize, redisPipelineBufferSize
		return redis.NewClusterClient(opt), nil
	}
	opt, err := redis.ParseURL(rawURL)
	if err != nil {
		return nil, fmt.Errorf("KEYGATE_REDIS_URL: %w", err)
	}
	opt.ContextTimeoutEnabled = true
	opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout = max(timeout, time.Second), timeout, timeout
	opt.PoolSize = max(opt.PoolSize, 64)
	opt.ReadBufferSize, opt.WriteBufferSize = redisBufferSize, redisBufferSize
	opt.PipelineReadBufferSize, opt.PipelineWriteBufferSize = redisPipelineBufferSize, redisPipelineBufferSize
	return redis.NewClient(opt), nil
}

// redisBufferSize is each Redis connection's read and write buffer.
// keygate's commands and replies are small (a charge, a lease, a key
// record); go-redis's default of 32 KiB each would hold 4 MiB of buffers in
// a full pool of 64 connections.
const redisBufferSize = 4 << 10

// redisPipelineBufferSize is the same for go-redis's pipeline pool, whose
// default is 128 KiB each: keygate's pipelines (a key record with its
// organization and plan, a batch of last-used times) are a few KiB, and a
// burst of credential lookups after a restart opens dozens of them.
const redisPipelineBufferSize = 16 << 10

// redactURL drops the user info of a URL for logging.
func redactURL(u *url.URL) string {
	c := *u
	c.User = nil
	return c.String()
}

// newLogger builds the zap logger. Output is buffered (flushed every
// second and on exit) so the access log costs no write per request.
func newLogger(cfg config, out io.Writer) (*zap.Logger, func()) {
	level, _ := zapcore.ParseLevel(cfg.LogLevel)
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.TimeKey = "ts"
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder
	var enc zapcore.Encoder
	if cfg.LogFormat == "console" {
		encCfg.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(encCfg)
	} else {
		enc = zapcore.NewJSONEncoder(encCfg)
	}
	ws := &zapcore.BufferedWriteSyncer{WS: zapcore.AddSync(out), Size: 256 << 10, FlushInterval: time.Second}
	log := zap.New(zapcore.NewCore(enc, ws, level), zap.ErrorOutput(zapcore.AddSync(out)))
	return log, func() { _ = ws.Stop() }
}

// newSealer builds the Sealer of signing secrets from KEYGATE_SECRET_KEY and
// KEYGATE_SECRET_KEY_PREVIOUS (validated by loadConfig); nil when signing is
// off.
func newSealer(cfg config) (*keys.Sealer, error) {
	if cfg.SecretKey == "" {
		return nil, nil
	}
	cur, err := base64.StdEncoding.DecodeString(cfg.SecretKey)
	if err != nil {
		return nil, fmt.Errorf("KEYGATE_SECRET_KEY: %w", err)
	}
	var prev []byte
	if cfg.SecretKeyPrevious != "" {
		if prev, err = base64.StdEncoding.DecodeString(cfg.SecretKeyPrevious); err != nil {
			return nil, fmt.Errorf("KEYGATE_SECRET_KEY_PREVIOUS: %w", err)
		}
	}
	s, err := keys.NewSealer(cur, prev)
	if err != nil {
		return nil, fmt.Errorf("KEYGATE_SECRET_KEY: %w", err)
	}
	return s, nil
}

// logSigning says at start-up whether signed requests are on, and under
// which key ids (never the keys).
func logSigning(log *zap.Logger, s *keys.Sealer) {
	if s == nil {
		log.Warn("request signing off: KEYGATE_SECRET_KEY is empty, so signed requests (X-Access-Signature) are refused " +
			"and new keys are created without a sealed secret (they can never sign)")
		return
	}
	fields := []zap.Field{zap.String("key_id", s.CurrentID().String())}
	if prev, ok := s.PreviousID(); ok {
		fields = append(fields, zap.String("previous_key_id", prev.String()))
	}
	log.Info("request signing on: new secrets are sealed with AES-256-GCM under KEYGATE_SECRET_KEY", fields...)
}

var _ lease.RateObserver = (*metrics.Metrics)(nil)

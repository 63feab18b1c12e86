package main

import (
	"context"
	"errors"
	"fmt"
	"net"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"

	"github.com/keygate/keygate/authz/extauthz"
	kgate "github.com/keygate/keygate/gate"
	"github.com/keygate/keygate/metrics"
)

// authzGRPC is the listener of Envoy's ext_authz over gRPC
// (KEYGATE_AUTHZ_GRPC_ADDR). A nil *authzGRPC is the listener turned off:
// every method does nothing.
type authzGRPC struct {
	addr     string
	maxConns int
	srv      *grpc.Server
	health   *health.Server
	ln       net.Listener
}

// newAuthzGRPC builds the listener on the decision g; nil when
// KEYGATE_AUTHZ_GRPC_ADDR is empty.
func newAuthzGRPC(cfg config, g *kgate.Decider, log *zap.Logger, m *metrics.Metrics) *authzGRPC {
	if cfg.AuthzGRPCAddr == "" {
		return nil
	}
	srv, hs := extauthz.NewGRPCServer(extauthz.New(extauthz.Options{
		Gate:               g,
		RejectNonCanonical: cfg.PathNormalize == "reject",
		Log:                log,
		Metrics:            m,
	}))
	return &authzGRPC{addr: cfg.AuthzGRPCAddr, maxConns: cfg.MaxConnections, srv: srv, health: hs}
}

func (a *authzGRPC) listen() error {
	if a == nil {
		return nil
	}
	ln, err := net.Listen("tcp", a.addr)
	if err != nil {
		return fmt.Errorf("KEYGATE_AUTHZ_GRPC_ADDR: authz_grpc listener on %s: %w", a.addr, err)
	}
	a.ln = newLimitListener(ln, a.maxConns)
	return nil
}

// start serves in the background; the outcome goes to errc.
func (a *authzGRPC) start(errc chan<- error, log *zap.Logger) {
	if a == nil {
		return
	}
	go func() {
		if err := a.srv.Serve(a.ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			errc <- fmt.Errorf("authz_grpc listener: %w", err)
			return
		}
		errc <- nil
	}()
	log.Info("listening", zap.String("listener", "authz_grpc"), zap.String("addr", a.ln.Addr().String()))
}

// boundAddr is the address listened on ("" when off).
func (a *authzGRPC) boundAddr() string {
	if a == nil || a.ln == nil {
		return ""
	}
	return a.ln.Addr().String()
}

// drain reports NOT_SERVING to health checks (Envoy's, the kubelet's) while
// checks keep being answered.
func (a *authzGRPC) drain() {
	if a != nil {
		a.health.Shutdown()
	}
}

// shutdown stops accepting and waits for the checks in flight until ctx
// ends, then closes what is left.
func (a *authzGRPC) shutdown(ctx context.Context) error {
	if a == nil {
		return nil
	}
	a.health.Shutdown()
	done := make(chan struct{})
	go func() { defer close(done); a.srv.GracefulStop() }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		a.srv.Stop()
		<-done
		return fmt.Errorf("shutting down authz_grpc listener: %w", ctx.Err())
	}
}

package inject

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"go.uber.org/zap"
)

// shutdownTimeout bounds the graceful stop: the API server's webhook timeout
// is at most 30 s and ours is set to 10 s, so no review lasts longer.
const shutdownTimeout = 10 * time.Second

// Run serves the webhook over HTTPS on KEYGATE_INJECT_ADDR until ctx is done,
// then stops accepting reviews and waits for those in flight. getenv is
// os.Getenv in production; a missing or malformed variable is returned as an
// error naming it, before anything listens.
func Run(ctx context.Context, getenv func(string) string, log *zap.Logger) error {
	if log == nil {
		log = zap.NewNop()
	}
	sc, err := configFromEnv(getenv)
	if err != nil {
		return fmt.Errorf("injector config: %w", err)
	}
	certs, err := newCertLoader(sc.CertFile, sc.KeyFile, log)
	if err != nil {
		return fmt.Errorf("injector TLS: %w", err)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", sc.Addr)
	if err != nil {
		return fmt.Errorf("injector listen on %s: %w", sc.Addr, err)
	}
	cfg := sc.Config
	if sc.NativeMode == modeAuto {
		// Asked before serving, so the first review already gets the answer.
		det := newVersionDetector(sc.KubeAPI, log)
		dctx, stopDetector := context.WithCancel(ctx)
		wait := det.start(dctx)
		defer func() { stopDetector(); wait() }()
		cfg.NativeSidecarFunc = det.Native
	}
	srv := &http.Server{
		Handler: NewHandler(cfg, log),
		TLSConfig: &tls.Config{
			MinVersion:     tls.VersionTLS12,
			GetCertificate: certs.GetCertificate,
		},
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          zap.NewStdLog(log.Named("http")),
	}
	served := make(chan error, 1)
	go func() { served <- srv.ServeTLS(ln, "", "") }()
	log.Info("injector listening", zap.String("addr", ln.Addr().String()),
		zap.String("image", sc.Image), zap.String("native_sidecar", sc.NativeMode))

	select {
	case err := <-served:
		return fmt.Errorf("injector serve on %s: %w", sc.Addr, err)
	case <-ctx.Done():
	}
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(stopCtx); err != nil {
		_ = srv.Close()
		return fmt.Errorf("injector shutdown: %w", err)
	}
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("injector serve on %s: %w", sc.Addr, err)
	}
	log.Info("injector stopped")
	return nil
}

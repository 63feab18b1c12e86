package inject_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/keygate/keygate/inject"
)

// writeServingCert writes a self-signed certificate for 127.0.0.1 with the
// given serial to dir/tls.crt and dir/tls.key, and stamps both files with mod
// so the loader sees a change even within the file system's time resolution.
func writeServingCert(t *testing.T, dir string, serial int64, mod time.Time) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: "keygate-injector"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	for name, block := range map[string]*pem.Block{
		"tls.crt": {Type: "CERTIFICATE", Bytes: der},
		"tls.key": {Type: "PRIVATE KEY", Bytes: keyDER},
	} {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(path, mod, mod); err != nil {
			t.Fatal(err)
		}
	}
}

// freeAddr returns a loopback address that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

// servedSerial completes a TLS handshake with addr and returns the serial of
// the certificate served, retrying until deadline while the server starts.
func servedSerial(t *testing.T, addr string, deadline time.Time) int64 {
	t.Helper()
	for {
		d := tls.Dialer{NetDialer: &net.Dialer{Timeout: time.Second}, Config: &tls.Config{InsecureSkipVerify: true}} //nolint:gosec // the test reads the served certificate, it does not trust it
		conn, err := d.DialContext(context.Background(), "tcp", addr)
		if err == nil {
			state := conn.(*tls.Conn).ConnectionState()
			_ = conn.Close()
			return state.PeerCertificates[0].SerialNumber.Int64()
		}
		if time.Now().After(deadline) {
			t.Fatalf("no TLS handshake with %s before the deadline: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRunReloadsCertificate runs the real server, rotates its certificate
// files in place and expects the next handshake to present the new one; then
// cancels the context and expects a clean return.
func TestRunReloadsCertificate(t *testing.T) {
	dir := t.TempDir()
	t0 := time.Now().Add(-time.Minute).Truncate(time.Second)
	writeServingCert(t, dir, 1, t0)
	addr := freeAddr(t)
	env := map[string]string{
		"KEYGATE_INJECT_ADDR":          addr,
		"KEYGATE_INJECT_TLS_CERT":      filepath.Join(dir, "tls.crt"),
		"KEYGATE_INJECT_TLS_KEY":       filepath.Join(dir, "tls.key"),
		"KEYGATE_INJECT_IMAGE":         "keygate:test",
		"KEYGATE_INJECT_CONFIG_SECRET": "keygate-config",
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- inject.Run(ctx, func(k string) string { return env[k] }, zaptest.NewLogger(t)) }()

	deadline := time.Now().Add(10 * time.Second)
	if got := servedSerial(t, addr, deadline); got != 1 {
		t.Fatalf("serial %d, want 1", got)
	}
	writeServingCert(t, dir, 2, t0.Add(30*time.Second))
	if got := servedSerial(t, addr, deadline); got != 2 {
		t.Fatalf("after rotation serial %d, want 2", got)
	}
	// A half-written rotation (garbage key) keeps the last good certificate.
	badKey := filepath.Join(dir, "tls.key")
	if err := os.WriteFile(badKey, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := servedSerial(t, addr, deadline); got != 2 {
		t.Fatalf("with a broken key file serial %d, want the previous 2", got)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after cancel: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return after its context was cancelled")
	}
}

// TestRunConfigErrors checks that each required variable is named when
// missing or malformed, before anything listens.
func TestRunConfigErrors(t *testing.T) {
	dir := t.TempDir()
	writeServingCert(t, dir, 1, time.Now())
	full := map[string]string{
		"KEYGATE_INJECT_ADDR":          "127.0.0.1:0",
		"KEYGATE_INJECT_TLS_CERT":      filepath.Join(dir, "tls.crt"),
		"KEYGATE_INJECT_TLS_KEY":       filepath.Join(dir, "tls.key"),
		"KEYGATE_INJECT_IMAGE":         "keygate:test",
		"KEYGATE_INJECT_CONFIG_SECRET": "keygate-config",
	}
	tests := []struct {
		name    string
		change  map[string]string
		wantErr string
	}{
		{"no image", map[string]string{"KEYGATE_INJECT_IMAGE": ""}, "KEYGATE_INJECT_IMAGE"},
		{"no secret", map[string]string{"KEYGATE_INJECT_CONFIG_SECRET": ""}, "KEYGATE_INJECT_CONFIG_SECRET"},
		{"bad secret name", map[string]string{"KEYGATE_INJECT_CONFIG_SECRET": "Bad_Name"}, "KEYGATE_INJECT_CONFIG_SECRET"},
		{"no cert", map[string]string{"KEYGATE_INJECT_TLS_CERT": ""}, "KEYGATE_INJECT_TLS_CERT"},
		{"no key", map[string]string{"KEYGATE_INJECT_TLS_KEY": ""}, "KEYGATE_INJECT_TLS_KEY"},
		{"missing cert file", map[string]string{"KEYGATE_INJECT_TLS_CERT": filepath.Join(dir, "nope.crt")}, "nope.crt"},
		{"bad native switch", map[string]string{"KEYGATE_INJECT_NATIVE_SIDECAR": "maybe"}, "KEYGATE_INJECT_NATIVE_SIDECAR"},
		{"bad pull policy", map[string]string{"KEYGATE_INJECT_IMAGE_PULL_POLICY": "Sometimes"}, "KEYGATE_INJECT_IMAGE_PULL_POLICY"},
		{"bad address", map[string]string{"KEYGATE_INJECT_ADDR": "127.0.0.1:http-nope"}, "listen"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := make(map[string]string, len(full))
			for k, v := range full {
				env[k] = v
			}
			for k, v := range tt.change {
				env[k] = v
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err := inject.Run(ctx, func(k string) string { return env[k] }, nil)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err %v, want one naming %q", err, tt.wantErr)
			}
			if errors.Is(err, context.DeadlineExceeded) {
				t.Fatal("Run served instead of refusing the config")
			}
		})
	}
}

package inject_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	admissionv1 "k8s.io/api/admission/v1"

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
		{"plain-http API server", map[string]string{"KEYGATE_INJECT_KUBE_API": "http://127.0.0.1:8080"}, "KEYGATE_INJECT_KUBE_API"},
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

// TestRunNativeSidecarMode runs the real server in each sidecar mode against a
// fake API server's /version and checks where an opted-in pod's keygate goes.
func TestRunNativeSidecarMode(t *testing.T) {
	var minor atomic.Value
	var hits atomic.Int32
	api := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if r.URL.Path != "/version" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write([]byte(`{"major":"1","minor":"` + minor.Load().(string) + `","gitVersion":"v1.x.0"}`))
	}))
	defer api.Close()
	caFile := filepath.Join(t.TempDir(), "api-ca.crt")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: api.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	review, err := os.ReadFile(filepath.Join("testdata", "opt-in.review.json"))
	if err != nil {
		t.Fatal(err)
	}
	const native, classic = "/spec/initContainers", "/spec/containers"
	tests := []struct {
		name, mode, apiURL, minor string
		want                      string
		wantAsked                 bool
	}{
		{"auto, 1.29", "", api.URL, "29", native, true},
		{"auto, 1.30+", "auto", api.URL, "30+", native, true},
		{"auto, 1.28", "auto", api.URL, "28", classic, true},
		{"auto, API server unreachable", "auto", "https://127.0.0.1:1", "29", classic, false},
		{"true, 1.28 not asked", "true", api.URL, "28", native, false},
		{"false, 1.29 not asked", "false", api.URL, "29", classic, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			minor.Store(tt.minor)
			hits.Store(0)
			dir := t.TempDir()
			writeServingCert(t, dir, 1, time.Now())
			addr := freeAddr(t)
			env := map[string]string{
				"KEYGATE_INJECT_ADDR":           addr,
				"KEYGATE_INJECT_TLS_CERT":       filepath.Join(dir, "tls.crt"),
				"KEYGATE_INJECT_TLS_KEY":        filepath.Join(dir, "tls.key"),
				"KEYGATE_INJECT_IMAGE":          "keygate:test",
				"KEYGATE_INJECT_CONFIG_SECRET":  "keygate-config",
				"KEYGATE_INJECT_NATIVE_SIDECAR": tt.mode,
				"KEYGATE_INJECT_KUBE_API":       tt.apiURL,
				"KEYGATE_INJECT_KUBE_CA":        caFile,
				"KEYGATE_INJECT_KUBE_TOKEN":     filepath.Join(dir, "no-token"),
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- inject.Run(ctx, func(k string) string { return env[k] }, zaptest.NewLogger(t)) }()
			servedSerial(t, addr, time.Now().Add(15*time.Second))

			hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // a test server's certificate
			resp, err := hc.Post("https://"+addr+"/mutate", "application/json", bytes.NewReader(review))
			if err != nil {
				t.Fatal(err)
			}
			var got admissionv1.AdmissionReview
			err = json.NewDecoder(resp.Body).Decode(&got)
			_ = resp.Body.Close()
			if err != nil || got.Response == nil || !got.Response.Allowed {
				t.Fatalf("review answer %+v, err %v", got.Response, err)
			}
			var ops []inject.Op
			if err := json.Unmarshal(got.Response.Patch, &ops); err != nil {
				t.Fatal(err)
			}
			where := ""
			for _, op := range ops {
				if op.Path == native || op.Path == classic+"/-" {
					where = strings.TrimSuffix(op.Path, "/-")
				}
			}
			if where != tt.want {
				t.Errorf("keygate added at %q, want %q (ops %v)", where, tt.want, ops)
			}
			if asked := hits.Load() > 0; asked != tt.wantAsked {
				t.Errorf("API server asked %d times, want asked = %v", hits.Load(), tt.wantAsked)
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
		})
	}
}

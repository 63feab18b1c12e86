package inject

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
)

func TestParseNativeMode(t *testing.T) {
	for in, want := range map[string]string{"": "auto", "auto": "auto", " AUTO ": "auto", "true": "true", "1": "true", "false": "false", "F": "false"} {
		got, err := parseNativeMode(in)
		if err != nil || got != want {
			t.Errorf("parseNativeMode(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"maybe", "yes", "native"} {
		if _, err := parseNativeMode(in); err == nil || !strings.Contains(err.Error(), "want auto, true or false") {
			t.Errorf("parseNativeMode(%q): err %v, want a refusal", in, err)
		}
	}
}

func TestServerVersion(t *testing.T) {
	tests := []struct {
		v            serverVersion
		major, minor int
		native       bool
		wantErr      bool
	}{
		{v: serverVersion{Major: "1", Minor: "28", GitVersion: "v1.28.9"}, major: 1, minor: 28},
		{v: serverVersion{Major: "1", Minor: "29", GitVersion: "v1.29.0"}, major: 1, minor: 29, native: true},
		{v: serverVersion{Major: "1", Minor: "30+", GitVersion: "v1.30.2-gke.1587003"}, major: 1, minor: 30, native: true},
		{v: serverVersion{Major: "1", Minor: "28+", GitVersion: "v1.28.15-eks-7f9249a"}, major: 1, minor: 28},
		{v: serverVersion{Major: "1", Minor: "37"}, major: 1, minor: 37, native: true},
		{v: serverVersion{Major: "2", Minor: "0"}, major: 2, minor: 0, native: true},
		{v: serverVersion{Major: "0", Minor: "99"}, major: 0, minor: 99},
		// major/minor missing or unusable: gitVersion decides.
		{v: serverVersion{GitVersion: "v1.29.3-k3s1"}, major: 1, minor: 29, native: true},
		{v: serverVersion{Major: "", Minor: "x", GitVersion: "1.27.1"}, major: 1, minor: 27},
		{v: serverVersion{Major: "one", Minor: "twenty-nine", GitVersion: "v1.31.0+k0s"}, major: 1, minor: 31, native: true},
		{v: serverVersion{}, wantErr: true},
		{v: serverVersion{Major: "+", Minor: "29", GitVersion: "devel"}, wantErr: true},
	}
	for _, tt := range tests {
		major, minor, err := tt.v.majorMinor()
		if tt.wantErr {
			if err == nil {
				t.Errorf("%+v: got %d.%d, want an error", tt.v, major, minor)
			}
			continue
		}
		if err != nil || major != tt.major || minor != tt.minor {
			t.Errorf("%+v: got %d.%d, %v; want %d.%d", tt.v, major, minor, err, tt.major, tt.minor)
			continue
		}
		if got := supportsNativeSidecar(major, minor); got != tt.native {
			t.Errorf("%+v: native %v, want %v", tt.v, got, tt.native)
		}
	}
}

func TestKubeAPIFromEnv(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		want    kubeAPI
		wantErr string
	}{
		{"not in a cluster", nil, kubeAPI{tokenFile: inClusterToken}, ""},
		{"in cluster", map[string]string{"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"},
			kubeAPI{url: "https://10.96.0.1:443", caFile: inClusterCAFile, tokenFile: inClusterToken}, ""},
		{"in cluster IPv6", map[string]string{"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"},
			kubeAPI{url: "https://[fd00::1]:443", caFile: inClusterCAFile, tokenFile: inClusterToken}, ""},
		{"override", map[string]string{"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443",
			"KEYGATE_INJECT_KUBE_API": "https://127.0.0.1:6443/", "KEYGATE_INJECT_KUBE_CA": "/tmp/ca.crt", "KEYGATE_INJECT_KUBE_TOKEN": "/tmp/token"},
			kubeAPI{url: "https://127.0.0.1:6443", caFile: "/tmp/ca.crt", tokenFile: "/tmp/token"}, ""},
		{"override without CA uses system roots", map[string]string{"KEYGATE_INJECT_KUBE_API": "https://k8s.example:443"},
			kubeAPI{url: "https://k8s.example:443", tokenFile: inClusterToken}, ""},
		{"plain http refused", map[string]string{"KEYGATE_INJECT_KUBE_API": "http://127.0.0.1:8080"}, kubeAPI{}, "KEYGATE_INJECT_KUBE_API"},
		{"no host", map[string]string{"KEYGATE_INJECT_KUBE_API": "https://"}, kubeAPI{}, "KEYGATE_INJECT_KUBE_API"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := kubeAPIFromEnv(func(k string) string { return tt.env[k] })
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want one naming %s", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

// fakeAPIServer answers GET /version over TLS with whatever the test sets,
// and records the Authorization header of the last request.
type fakeAPIServer struct {
	*httptest.Server
	caFile string

	mu     sync.Mutex
	status int
	body   string
	auth   string
	hits   int
}

func newFakeAPIServer(t *testing.T) *fakeAPIServer {
	t.Helper()
	f := &fakeAPIServer{}
	f.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.hits++
		f.auth = r.Header.Get("Authorization")
		if r.Method != http.MethodGet || r.URL.Path != "/version" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(f.status)
		_, _ = w.Write([]byte(f.body))
	}))
	t.Cleanup(f.Close)
	f.caFile = filepath.Join(t.TempDir(), "ca.crt")
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.Certificate().Raw})
	if err := os.WriteFile(f.caFile, ca, 0o600); err != nil {
		t.Fatal(err)
	}
	f.answer(http.StatusOK, "1", "29")
	return f
}

// answer sets the next answers: a version info with major and minor, or,
// for a status other than 200, a Status-like error body.
func (f *fakeAPIServer) answer(status int, major, minor string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.status = status
	if status == http.StatusOK {
		f.body = `{"major":"` + major + `","minor":"` + minor + `","gitVersion":"v` + major + "." + strings.TrimSuffix(minor, "+") + `.0","platform":"linux/amd64"}`
	} else {
		f.body = `{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Forbidden","code":403}`
	}
}

func (f *fakeAPIServer) setBody(body string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.status, f.body = http.StatusOK, body
}

func (f *fakeAPIServer) lastAuth() (string, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.auth, f.hits
}

func TestDetectorCheck(t *testing.T) {
	api := newFakeAPIServer(t)
	token := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(token, []byte("sa-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := newVersionDetector(kubeAPI{url: api.URL, caFile: api.caFile, tokenFile: token}, zaptest.NewLogger(t))
	ctx := context.Background()

	steps := []struct {
		name       string
		set        func()
		wantErr    string
		wantNative bool
	}{
		{"1.28 is classic", func() { api.answer(http.StatusOK, "1", "28") }, "", false},
		{"1.29 is native", func() { api.answer(http.StatusOK, "1", "29") }, "", true},
		{"back to 1.28", func() { api.answer(http.StatusOK, "1", "28") }, "", false},
		{"1.30+ is native", func() { api.answer(http.StatusOK, "1", "30+") }, "", true},
		{"an error status keeps the last answer", func() { api.answer(http.StatusForbidden, "", "") }, "403", true},
		{"not JSON keeps the last answer", func() { api.setBody("<html>") }, "not a version", true},
		{"no version keeps the last answer", func() { api.setBody(`{"major":"","minor":"","gitVersion":"devel"}`) }, "cannot read a version", true},
		{"1.28 again", func() { api.answer(http.StatusOK, "1", "28") }, "", false},
	}
	for _, s := range steps {
		s.set()
		err := d.check(ctx)
		if s.wantErr == "" && err != nil || s.wantErr != "" && (err == nil || !strings.Contains(err.Error(), s.wantErr)) {
			t.Errorf("%s: err %v, want %q", s.name, err, s.wantErr)
		}
		if got := d.Native(); got != s.wantNative {
			t.Errorf("%s: native %v, want %v", s.name, got, s.wantNative)
		}
	}
	if auth, hits := api.lastAuth(); auth != "Bearer sa-token" || hits != len(steps) {
		t.Errorf("Authorization %q after %d requests, want the token on each of %d", auth, hits, len(steps))
	}

	// Without a token file the request is anonymous (/version is public).
	anon := newVersionDetector(kubeAPI{url: api.URL, caFile: api.caFile, tokenFile: filepath.Join(t.TempDir(), "none")}, zaptest.NewLogger(t))
	api.answer(http.StatusOK, "1", "31")
	if err := anon.check(ctx); err != nil || !anon.Native() {
		t.Fatalf("anonymous check: native %v, err %v", anon.Native(), err)
	}
	if auth, _ := api.lastAuth(); auth != "" {
		t.Errorf("Authorization %q without a token file, want none", auth)
	}
}

func TestDetectorCheckErrors(t *testing.T) {
	api := newFakeAPIServer(t)
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "bad.crt")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	// httptest servers all present the same certificate: make another CA.
	otherCA := filepath.Join(dir, "other.crt")
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "other-ca"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(otherCA, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		api     kubeAPI
		wantErr string
	}{
		{"no address", kubeAPI{}, "KUBERNETES_SERVICE_HOST"},
		{"missing CA", kubeAPI{url: api.URL, caFile: filepath.Join(dir, "none.crt")}, "automountServiceAccountToken"},
		{"CA not PEM", kubeAPI{url: api.URL, caFile: notPEM}, "no PEM certificate"},
		{"untrusted server", kubeAPI{url: api.URL, caFile: otherCA}, "certificate"},
		{"system roots do not trust a test CA", kubeAPI{url: api.URL}, "certificate"},
		{"nothing listening", kubeAPI{url: "https://127.0.0.1:1", caFile: api.caFile}, "127.0.0.1:1"},
		{"token unreadable", kubeAPI{url: api.URL, caFile: api.caFile, tokenFile: dir}, "service account token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newVersionDetector(tt.api, zaptest.NewLogger(t))
			err := d.check(context.Background())
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err %v, want one containing %q", err, tt.wantErr)
			}
			if d.Native() {
				t.Error("native after a failed first check, want the classic fallback")
			}
		})
	}
}

// TestDetectorRefresh drives the background loop with the test's own clock:
// every due check is a send on tick, and every finished check is reported on
// checked, so nothing sleeps.
func TestDetectorRefresh(t *testing.T) {
	api := newFakeAPIServer(t)
	api.answer(http.StatusServiceUnavailable, "", "")
	d := newVersionDetector(kubeAPI{url: api.URL, caFile: api.caFile}, zaptest.NewLogger(t))
	tick := make(chan time.Time)
	intervals := make(chan time.Duration, 1)
	d.after = func(dur time.Duration) <-chan time.Time {
		intervals <- dur
		return tick
	}
	type result struct {
		native bool
		err    error
	}
	checked := make(chan result, 1)
	d.checked = func(native bool, err error) { checked <- result{native, err} }

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wait := d.start(ctx)
	next := func(t *testing.T) result {
		t.Helper()
		select {
		case r := <-checked:
			return r
		case <-time.After(10 * time.Second):
			t.Fatal("no check reported")
			return result{}
		}
	}
	due := func(t *testing.T, want time.Duration) {
		t.Helper()
		select {
		case got := <-intervals:
			if got != want {
				t.Fatalf("next check in %s, want %s", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("loop did not schedule a check")
		}
		tick <- time.Now()
	}

	if r := next(t); r.err == nil || r.native {
		t.Fatalf("start-up check against a failing server: %+v, want an error and classic", r)
	}
	// Unknown: retried soon, and the answer is picked up.
	api.answer(http.StatusOK, "1", "28")
	due(t, versionRetry)
	if r := next(t); r.err != nil || r.native {
		t.Fatalf("after 1.28: %+v, want classic", r)
	}
	// Known: re-checked at the slow pace; a control-plane upgrade switches.
	api.answer(http.StatusOK, "1", "29")
	due(t, versionRecheck)
	if r := next(t); r.err != nil || !r.native || !d.Native() {
		t.Fatalf("after the upgrade to 1.29: %+v, want native", r)
	}
	// A failure keeps the last known answer and the slow pace.
	api.answer(http.StatusInternalServerError, "", "")
	due(t, versionRecheck)
	if r := next(t); r.err == nil || !r.native || !d.Native() {
		t.Fatalf("after a failure: %+v, want an error and native kept", r)
	}
	select {
	case got := <-intervals:
		if got != versionRecheck {
			t.Fatalf("after a failure with a known answer next check in %s, want %s", got, versionRecheck)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("loop did not schedule a check")
	}

	cancel()
	stopped := make(chan struct{})
	go func() { wait(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("detector did not stop with its context")
	}
}

// TestDetectorNoAddress: outside a cluster without KEYGATE_INJECT_KUBE_API
// the start-up check fails, the answer is classic, and no loop runs.
func TestDetectorNoAddress(t *testing.T) {
	d := newVersionDetector(kubeAPI{}, zaptest.NewLogger(t))
	d.after = func(time.Duration) <-chan time.Time {
		t.Error("a loop was started without an API server address")
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	wait := d.start(ctx)
	cancel()
	wait()
	if d.Native() {
		t.Error("native without a version, want classic")
	}
}

func TestNativeDefault(t *testing.T) {
	native := false
	cfg := Config{NativeSidecar: true, NativeSidecarFunc: func() bool { return native }}
	if cfg.nativeDefault() {
		t.Error("NativeSidecarFunc false, NativeSidecar true: want the func's answer")
	}
	native = true
	if !cfg.nativeDefault() {
		t.Error("NativeSidecarFunc true: want native")
	}
	if !(Config{NativeSidecar: true}).nativeDefault() || (Config{}).nativeDefault() {
		t.Error("without NativeSidecarFunc NativeSidecar decides")
	}
}

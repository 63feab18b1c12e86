package inject

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// With KEYGATE_INJECT_NATIVE_SIDECAR=auto (the default) the injector asks the
// API server for its version and adds keygate as a native sidecar when the
// server is at least 1.29 (SidecarContainers is on by default from 1.29), as
// a classic container otherwise. The only call is GET /version, which the
// built-in ClusterRole system:public-info-viewer grants to
// system:authenticated and system:unauthenticated: the injector's service
// account needs no Role.

// Native sidecars need Kubernetes >= nativeSidecarMajor.nativeSidecarMinor.
const (
	nativeSidecarMajor = 1
	nativeSidecarMinor = 29
)

// In-cluster defaults: the variables the kubelet sets in every container and
// the files of the mounted service account token.
const (
	serviceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"
	inClusterCAFile   = serviceAccountDir + "/ca.crt"
	inClusterToken    = serviceAccountDir + "/token"
)

const (
	// versionRecheck is how often the answer is refreshed once known, so a
	// control-plane upgrade is picked up without restarting the injector.
	versionRecheck = 10 * time.Minute
	// versionRetry is how often a version that could not be learned yet is
	// asked for again (meanwhile the injector adds classic containers).
	versionRetry = 30 * time.Second
	// versionTimeout bounds one GET /version, start-up included.
	versionTimeout = 5 * time.Second
	// maxVersionBytes bounds the answer; the real one is about 400 bytes.
	maxVersionBytes = 64 << 10
)

// Sidecar modes of KEYGATE_INJECT_NATIVE_SIDECAR.
const (
	modeAuto    = "auto"
	modeNative  = "true"
	modeClassic = "false"
)

// parseNativeMode reads KEYGATE_INJECT_NATIVE_SIDECAR: auto (also when
// empty), or a boolean.
func parseNativeMode(v string) (string, error) {
	v = strings.TrimSpace(v)
	if v == "" || strings.EqualFold(v, modeAuto) {
		return modeAuto, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return "", fmt.Errorf("KEYGATE_INJECT_NATIVE_SIDECAR %q: want auto, true or false", v)
	}
	return strconv.FormatBool(b), nil
}

// serverVersion is the part of the API server's /version answer
// (k8s.io/apimachinery/pkg/version.Info) the injector reads.
type serverVersion struct {
	Major      string `json:"major"`
	Minor      string `json:"minor"`
	GitVersion string `json:"gitVersion"`
}

func (v serverVersion) String() string {
	if v.GitVersion != "" {
		return v.GitVersion
	}
	return v.Major + "." + v.Minor
}

var (
	leadingDigits = regexp.MustCompile(`^[0-9]+`)
	gitVersionRE  = regexp.MustCompile(`^v?([0-9]+)\.([0-9]+)`)
)

// majorMinor returns the server's major and minor version. It reads the major
// and minor fields, which some distributions suffix ("29+" on GKE and EKS),
// and falls back to gitVersion ("v1.29.3-eks-1234") when they do not parse.
func (v serverVersion) majorMinor() (int, int, error) {
	maj, majErr := strconv.Atoi(leadingDigits.FindString(strings.TrimSpace(v.Major)))
	minor, minErr := strconv.Atoi(leadingDigits.FindString(strings.TrimSpace(v.Minor)))
	if majErr == nil && minErr == nil {
		return maj, minor, nil
	}
	if m := gitVersionRE.FindStringSubmatch(strings.TrimSpace(v.GitVersion)); m != nil {
		maj, majErr = strconv.Atoi(m[1])
		minor, minErr = strconv.Atoi(m[2])
		if majErr == nil && minErr == nil {
			return maj, minor, nil
		}
	}
	return 0, 0, fmt.Errorf("cannot read a version from major %q, minor %q, gitVersion %q", v.Major, v.Minor, v.GitVersion)
}

// supportsNativeSidecar reports whether a server of this version runs init
// containers with restartPolicy Always as sidecars.
func supportsNativeSidecar(major, minor int) bool {
	return major > nativeSidecarMajor || (major == nativeSidecarMajor && minor >= nativeSidecarMinor)
}

// kubeAPI says where the API server is and how to trust and authenticate to it.
type kubeAPI struct {
	url       string // https://host:port, no trailing slash; empty = unknown
	caFile    string // empty = the system's roots
	tokenFile string // sent as a bearer token when the file exists
}

// kubeAPIFromEnv finds the API server: KEYGATE_INJECT_KUBE_API (an https URL)
// or, in a pod, KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT; the CA
// from KEYGATE_INJECT_KUBE_CA or the mounted service account's ca.crt (only
// in-cluster); the token from KEYGATE_INJECT_KUBE_TOKEN or the mounted
// service account's token. Neither set is not an error: detection then
// reports that it cannot ask.
func kubeAPIFromEnv(getenv func(string) string) (kubeAPI, error) {
	api := kubeAPI{caFile: getenv("KEYGATE_INJECT_KUBE_CA"), tokenFile: getenv("KEYGATE_INJECT_KUBE_TOKEN")}
	if api.tokenFile == "" {
		api.tokenFile = inClusterToken
	}
	if raw := getenv("KEYGATE_INJECT_KUBE_API"); raw != "" {
		u, err := url.Parse(raw)
		if err != nil || u.Scheme != "https" || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			return kubeAPI{}, fmt.Errorf("KEYGATE_INJECT_KUBE_API %q: want an https URL such as https://10.96.0.1:443", raw)
		}
		api.url = strings.TrimSuffix(u.String(), "/")
		return api, nil
	}
	host, port := getenv("KUBERNETES_SERVICE_HOST"), getenv("KUBERNETES_SERVICE_PORT")
	if host != "" && port != "" {
		api.url = "https://" + net.JoinHostPort(host, port)
		if api.caFile == "" {
			api.caFile = inClusterCAFile
		}
	}
	return api, nil
}

// serverVersion asks the API server for its version. The CA and the token are
// read on every call: the kubelet rotates projected tokens, and the cluster's
// CA bundle can change.
func (a kubeAPI) serverVersion(ctx context.Context) (serverVersion, error) {
	if a.url == "" {
		return serverVersion{}, errors.New("no API server: KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT unset (not in a pod?) and KEYGATE_INJECT_KUBE_API not set")
	}
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS12}
	if a.caFile != "" {
		pemData, err := os.ReadFile(a.caFile)
		if err != nil {
			return serverVersion{}, fmt.Errorf("read API server CA (is automountServiceAccountToken false?): %w", err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pemData) {
			return serverVersion{}, fmt.Errorf("API server CA %s: no PEM certificate", a.caFile)
		}
		tlsConf.RootCAs = roots
	}
	var token string
	if a.tokenFile != "" {
		data, err := os.ReadFile(a.tokenFile)
		switch {
		case err == nil:
			token = strings.TrimSpace(string(data))
		case errors.Is(err, fs.ErrNotExist):
			// Anonymous: /version is public unless anonymous auth is off.
		default:
			return serverVersion{}, fmt.Errorf("read service account token: %w", err)
		}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsConf
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, versionTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.url+"/version", nil)
	if err != nil {
		return serverVersion{}, err
	}
	req.Header.Set("Accept", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return serverVersion{}, fmt.Errorf("GET %s/version: %w", a.url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxVersionBytes))
	if err != nil {
		return serverVersion{}, fmt.Errorf("GET %s/version: %w", a.url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return serverVersion{}, fmt.Errorf("GET %s/version: %s: %.200s", a.url, resp.Status, body)
	}
	var v serverVersion
	if err := json.Unmarshal(body, &v); err != nil {
		return serverVersion{}, fmt.Errorf("GET %s/version: not a version: %w", a.url, err)
	}
	return v, nil
}

// versionDetector holds the current answer of auto mode. Native is safe for
// concurrent use: the handler reads it on every review while run refreshes it.
type versionDetector struct {
	api kubeAPI
	log *zap.Logger

	native atomic.Bool // false (classic) until a version is learned
	known  bool        // only touched by check, which is called from one goroutine at a time

	// after returns the channel that fires when the next check is due;
	// time.After in production, a channel of the test's in tests.
	after func(time.Duration) <-chan time.Time
	// checked, when set, is called after every check (tests wait on it).
	checked func(native bool, err error)
}

func newVersionDetector(api kubeAPI, log *zap.Logger) *versionDetector {
	return &versionDetector{api: api, log: log, after: time.After}
}

// Native reports whether pods should get a native sidecar by default.
func (d *versionDetector) Native() bool { return d.native.Load() }

// check asks once and updates the answer; a failure keeps the last known one
// (classic when none was ever learned).
func (d *versionDetector) check(ctx context.Context) error {
	err := d.refresh(ctx)
	if d.checked != nil {
		d.checked(d.native.Load(), err)
	}
	return err
}

func (d *versionDetector) refresh(ctx context.Context) error {
	v, err := d.api.serverVersion(ctx)
	if err != nil {
		return err
	}
	major, minor, err := v.majorMinor()
	if err != nil {
		return fmt.Errorf("API server /version: %w", err)
	}
	native := supportsNativeSidecar(major, minor)
	old := d.native.Swap(native)
	if !d.known || old != native {
		d.log.Info("API server version learned: "+modeText(native),
			zap.String("server_version", v.String()), zap.Bool("native_sidecar", native))
	}
	d.known = true
	return nil
}

func modeText(native bool) string {
	if native {
		return "adding keygate as a native sidecar (Kubernetes >= 1.29)"
	}
	return "adding keygate as a classic container (Kubernetes < 1.29)"
}

// start makes the first check, bounded by versionTimeout, and then refreshes
// the answer in the background until ctx is done; wait for the returned
// function before returning from Run.
func (d *versionDetector) start(ctx context.Context) (wait func()) {
	if err := d.check(ctx); err != nil {
		d.log.Warn("cannot learn the API server version: adding keygate as a classic container, which works on every Kubernetes version, until it can be learned (set KEYGATE_INJECT_NATIVE_SIDECAR=true or false to choose)",
			zap.Error(err), zap.Duration("retry_in", versionRetry))
	}
	var wg sync.WaitGroup
	if d.api.url != "" { // without an address nothing will change: no point asking again
		wg.Go(func() { d.run(ctx) })
	}
	return wg.Wait
}

// run re-checks every versionRecheck, or every versionRetry while the
// version has never been learned.
func (d *versionDetector) run(ctx context.Context) {
	for {
		interval := versionRecheck
		if !d.known {
			interval = versionRetry
		}
		select {
		case <-ctx.Done():
			return
		case <-d.after(interval):
		}
		if err := d.check(ctx); err != nil && ctx.Err() == nil {
			d.log.Warn("cannot refresh the API server version, keeping the last answer: "+modeText(d.native.Load()), zap.Error(err))
		}
	}
}

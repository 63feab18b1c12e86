//go:build e2ek8s

package deploytest

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
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"

	"github.com/keygate/keygate/inject"
)

// The end-to-end test: etcd and a real kube-apiserver on loopback, the
// injector in-process behind the webhook configuration we ship (its sidecar
// mode auto-detected from that API server's /version, asked with a token of
// a ServiceAccount without roles), pods created
// through the API server, and every rendered manifest applied with
// server-side dry-run. Run it with scripts/e2e-k8s.sh, which provides:
//
//	KEYGATE_KUBE_APISERVER  path to kube-apiserver (tools/build-kube-apiserver.sh)
//	KEYGATE_ETCD            path to etcd (default: etcd on PATH)
const e2eTimeout = 4 * time.Minute

func TestE2EKubernetes(t *testing.T) {
	apiserverBin := os.Getenv("KEYGATE_KUBE_APISERVER")
	if apiserverBin == "" {
		t.Fatal("KEYGATE_KUBE_APISERVER is not set: run scripts/e2e-k8s.sh")
	}
	etcdBin := os.Getenv("KEYGATE_ETCD")
	if etcdBin == "" {
		etcdBin = "etcd"
	}
	ctx, cancel := context.WithTimeout(context.Background(), e2eTimeout)
	defer cancel()
	dir := t.TempDir()
	pki := newPKI(t, dir)

	etcdURL := startEtcd(ctx, t, etcdBin, dir)
	cfg := startAPIServer(ctx, t, apiserverBin, dir, etcdURL, pki)
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}

	// The injector runs with KEYGATE_INJECT_NATIVE_SIDECAR=auto and asks this
	// API server for its version with a token of its own service account,
	// which has no Role: GET /version is allowed by system:public-info-viewer.
	serverVersion, err := cs.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kube-apiserver %s (major %q, minor %q)", serverVersion.GitVersion, serverVersion.Major, serverVersion.Minor)
	tokenFile := injectorToken(ctx, t, cs, dir)
	injectorAddr, injectorLogs := startInjector(ctx, t, dir, pki, cfg.Host, tokenFile)
	t.Run("auto mode learned native sidecars from the API server", func(t *testing.T) {
		learned := injectorLogs.FilterMessageSnippet("API server version learned").All()
		if len(learned) != 1 {
			t.Fatalf("%d \"API server version learned\" log entries, want 1; warnings: %v", len(learned), injectorLogs.FilterLevelExact(zapcore.WarnLevel).All())
		}
		fields := learned[0].ContextMap()
		if fields["server_version"] != serverVersion.GitVersion || fields["native_sidecar"] != true {
			t.Errorf("detector logged %v, want server_version %s and native_sidecar true", fields, serverVersion.GitVersion)
		}
	})
	registerWebhook(ctx, t, cs, injectorAddr, pki.caPEM)

	for _, ns := range []struct {
		name   string
		labels map[string]string
	}{{"shop", map[string]string{"keygate.io/inject": "enabled"}}, {"plain", nil}} {
		createNamespace(ctx, t, cs, ns.name, ns.labels)
	}
	waitInjecting(ctx, t, cs, "shop")

	t.Run("opted-in pod is stored with keygate as a native sidecar (auto)", func(t *testing.T) {
		got, err := cs.CoreV1().Pods("shop").Create(ctx, appPod("web", true, nil), metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create pod: %v", err)
		}
		stored, err := cs.CoreV1().Pods("shop").Get(ctx, got.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		checkInjectedPod(t, stored)
	})
	t.Run("classic container on request", func(t *testing.T) {
		got, err := cs.CoreV1().Pods("shop").Create(ctx, appPod("classic", true, map[string]string{"keygate.io/native-sidecar": "false"}), metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create pod: %v", err)
		}
		if len(got.Spec.InitContainers) != 0 || len(got.Spec.Containers) != 2 || got.Spec.Containers[1].Name != "keygate" || got.Spec.Containers[1].RestartPolicy != nil {
			t.Fatalf("want keygate as a second container: init %d, containers %d", len(got.Spec.InitContainers), len(got.Spec.Containers))
		}
		if port, ok := resolveTargetPort(got, intstr.FromString("http")); !ok || port != 8000 {
			t.Errorf("Service targetPort http resolves to %d (%v), want keygate's 8000", port, ok)
		}
	})
	t.Run("pod in a plain namespace is untouched", func(t *testing.T) {
		got, err := cs.CoreV1().Pods("plain").Create(ctx, appPod("web", true, nil), metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create pod: %v", err)
		}
		checkUntouched(t, got)
	})
	t.Run("pod without the label is untouched", func(t *testing.T) {
		got, err := cs.CoreV1().Pods("shop").Create(ctx, appPod("no-label", false, nil), metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create pod: %v", err)
		}
		checkUntouched(t, got)
	})
	t.Run("bad annotation is refused with the reason", func(t *testing.T) {
		_, err := cs.CoreV1().Pods("shop").Create(ctx, appPod("bad", true, map[string]string{"keygate.io/failure-mode": "sometimes"}), metav1.CreateOptions{})
		if err == nil || !strings.Contains(err.Error(), "keygate injector") || !strings.Contains(err.Error(), "keygate.io/failure-mode") {
			t.Fatalf("err %v, want a denial naming the annotation", err)
		}
	})
	checkAuthzModePods(ctx, t, cs)
	t.Run("manifests pass server-side dry-run", func(t *testing.T) {
		dryRunManifests(ctx, t, cfg, cs)
	})
}

// pki is the test's own CA and the certificates it issues.
type pki struct {
	caPEM                     []byte
	serverCert, serverKey     string // 127.0.0.1: apiserver and injector
	clientCert, clientKey     string // system:masters
	saKey                     string // service account signing key
	clientCertPEM, clientKPEM []byte
}

func newPKI(t *testing.T, dir string) *pki {
	t.Helper()
	caKey := mustKey(t)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "keygate-e2e-ca"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(serial int64, subject pkix.Name, usage x509.ExtKeyUsage, ips []net.IP, dns []string) ([]byte, []byte) {
		key := mustKey(t)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      subject,
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     time.Now().Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
			IPAddresses:  ips,
			DNSNames:     dns,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM(t, key)
	}
	p := &pki{caPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})}
	sc, sk := issue(2, pkix.Name{CommonName: "127.0.0.1"}, x509.ExtKeyUsageServerAuth, []net.IP{net.IPv4(127, 0, 0, 1)}, []string{"localhost"})
	p.clientCertPEM, p.clientKPEM = issue(3, pkix.Name{CommonName: "keygate-e2e", Organization: []string{"system:masters"}}, x509.ExtKeyUsageClientAuth, nil, nil)
	files := map[string][]byte{
		"ca.crt": p.caPEM, "server.crt": sc, "server.key": sk,
		"client.crt": p.clientCertPEM, "client.key": p.clientKPEM, "sa.key": keyPEM(t, mustKey(t)),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	p.serverCert, p.serverKey = filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	p.clientCert, p.clientKey = filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key")
	p.saKey = filepath.Join(dir, "sa.key")
	return p
}

func mustKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func keyPEM(t *testing.T, k *ecdsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// childEnv is the environment of the started servers: no proxy settings, so
// the API server calls the webhook on loopback directly.
func childEnv() []string {
	return []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "NO_PROXY=127.0.0.1,localhost", "no_proxy=127.0.0.1,localhost"}
}

// startProcess runs a server until the test ends: SIGTERM first, SIGKILL
// after 10 s, and SIGKILL if the test binary itself dies. Its output goes to
// a log file that is printed when the test fails.
func startProcess(ctx context.Context, t *testing.T, dir, name, bin string, args ...string) {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	pctx, stop := context.WithCancel(ctx)
	cmd := exec.CommandContext(pctx, bin, args...)
	cmd.Env = childEnv()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Logf("started %s (pid %d), log %s", name, cmd.Process.Pid, logPath)
	t.Cleanup(func() {
		stop()
		_ = cmd.Wait()
		_ = logFile.Close()
		if t.Failed() {
			if data, err := os.ReadFile(logPath); err == nil {
				if len(data) > 6000 {
					data = data[len(data)-6000:]
				}
				t.Logf("--- last lines of %s ---\n%s", name, data)
			}
		}
	})
}

// poll calls f every 200 ms until it reports done or the deadline passes; the
// error f returns while not done says why, for the failure message.
func poll(ctx context.Context, t *testing.T, what string, limit time.Duration, f func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(limit)
	var last error
	for attempt := 0; ; attempt++ {
		done, err := f()
		if done {
			return
		}
		last = err
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("%s: not ready after %s (%d attempts): %v", what, limit, attempt+1, last)
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func startEtcd(ctx context.Context, t *testing.T, bin, dir string) string {
	t.Helper()
	client := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	peer := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	startProcess(ctx, t, dir, "etcd", bin,
		"--name=e2e", "--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls="+client, "--advertise-client-urls="+client,
		"--listen-peer-urls="+peer, "--initial-advertise-peer-urls="+peer,
		"--initial-cluster=e2e="+peer, "--log-level=warn")
	hc := &http.Client{Timeout: time.Second}
	poll(ctx, t, "etcd", 30*time.Second, func() (bool, error) {
		resp, err := hc.Get(client + "/health")
		if err != nil {
			return false, err
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, fmt.Errorf("health %s", resp.Status)
	})
	return client
}

func startAPIServer(ctx context.Context, t *testing.T, bin, dir, etcdURL string, p *pki) *rest.Config {
	t.Helper()
	port := freePort(t)
	startProcess(ctx, t, dir, "kube-apiserver", bin,
		"--etcd-servers="+etcdURL,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", port),
		"--tls-cert-file="+p.serverCert, "--tls-private-key-file="+p.serverKey,
		"--client-ca-file="+filepath.Join(dir, "ca.crt"),
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file="+p.saKey, "--service-account-signing-key-file="+p.saKey,
		"--service-cluster-ip-range=10.96.0.0/24",
		"--endpoint-reconciler-type=none",
		"--enable-priority-and-fairness=false",
		"--cert-dir="+filepath.Join(dir, "apiserver-certs"),
		"-v=1")
	cfg := &rest.Config{
		Host: fmt.Sprintf("https://127.0.0.1:%d", port),
		TLSClientConfig: rest.TLSClientConfig{
			CAData: p.caPEM, CertData: p.clientCertPEM, KeyData: p.clientKPEM,
		},
		Timeout: 20 * time.Second,
		QPS:     100, Burst: 200,
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	poll(ctx, t, "kube-apiserver /readyz", 120*time.Second, func() (bool, error) {
		body, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil {
			return false, fmt.Errorf("%w: %s", err, body)
		}
		return true, nil
	})
	return cfg
}

// injectorToken creates the injector's namespace and ServiceAccount as the
// shipped manifests do (no Role, no RoleBinding) and writes a token for it
// from the TokenRequest API, as the kubelet would mount it.
func injectorToken(ctx context.Context, t *testing.T, cs kubernetes.Interface, dir string) string {
	t.Helper()
	const ns, sa = "keygate-system", "keygate-injector"
	createNamespace(ctx, t, cs, ns, nil)
	_, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create service account %s/%s: %v", ns, sa, err)
	}
	expiry := int64(3600)
	tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &expiry},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for %s/%s: %v", ns, sa, err)
	}
	path := filepath.Join(dir, "injector-token")
	if err := os.WriteFile(path, []byte(tr.Status.Token), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// startInjector runs inject.Run in-process, as `keygate inject` does, with a
// serving certificate from the test's CA and KEYGATE_INJECT_NATIVE_SIDECAR=auto
// pointed at the test's API server. It returns the address and the
// injector's log entries (also written to the test log).
func startInjector(ctx context.Context, t *testing.T, dir string, p *pki, apiURL, tokenFile string) (string, *observer.ObservedLogs) {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	env := map[string]string{
		"KEYGATE_INJECT_ADDR":           addr,
		"KEYGATE_INJECT_TLS_CERT":       p.serverCert,
		"KEYGATE_INJECT_TLS_KEY":        p.serverKey,
		"KEYGATE_INJECT_IMAGE":          "ghcr.io/keygate/keygate:e2e",
		"KEYGATE_INJECT_CONFIG_SECRET":  "keygate-config",
		"KEYGATE_INJECT_NAMESPACE":      "keygate-system",
		"KEYGATE_INJECT_NATIVE_SIDECAR": "auto",
		"KEYGATE_INJECT_KUBE_API":       apiURL,
		"KEYGATE_INJECT_KUBE_CA":        filepath.Join(dir, "ca.crt"),
		"KEYGATE_INJECT_KUBE_TOKEN":     tokenFile,
	}
	obsCore, logs := observer.New(zapcore.InfoLevel)
	log := zap.New(zapcore.NewTee(zaptest.NewLogger(t).Core(), obsCore))
	ictx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- inject.Run(ictx, func(k string) string { return env[k] }, log) }()
	t.Cleanup(func() {
		stop()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("injector: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("injector did not stop")
		}
	})
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(p.caPEM)
	hc := &http.Client{Timeout: time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	poll(ctx, t, "injector", 20*time.Second, func() (bool, error) {
		select {
		case err := <-done:
			return false, fmt.Errorf("injector exited: %v", err)
		default:
		}
		resp, err := hc.Get("https://" + addr + "/healthz")
		if err != nil {
			return false, err
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, fmt.Errorf("healthz %s", resp.Status)
	})
	return addr, logs
}

// registerWebhook registers the webhook exactly as deploy/kubernetes/injector
// ships it (rules, selectors, policies), pointed at the loopback injector.
func registerWebhook(ctx context.Context, t *testing.T, cs kubernetes.Interface, addr string, ca []byte) {
	t.Helper()
	var shipped *admissionregistrationv1.MutatingWebhookConfiguration
	for _, r := range renderAll(t) {
		if r.dir == "injector" {
			shipped, _ = r.find("MutatingWebhookConfiguration", "keygate-injector").(*admissionregistrationv1.MutatingWebhookConfiguration)
		}
	}
	if shipped == nil {
		t.Fatal("no MutatingWebhookConfiguration in deploy/kubernetes/injector")
	}
	mwc := shipped.DeepCopy()
	mwc.Name = "keygate-injector-e2e"
	mwc.Annotations = nil
	url := "https://" + addr + "/mutate"
	for i := range mwc.Webhooks {
		mwc.Webhooks[i].ClientConfig = admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: ca}
	}
	if _, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, mwc, metav1.CreateOptions{}); err != nil {
		t.Fatalf("register webhook: %v", err)
	}
}

// createNamespace creates a namespace and its default service account (no
// controller-manager runs here to create it, and pod admission needs it).
func createNamespace(ctx context.Context, t *testing.T, cs kubernetes.Interface, name string, labels map[string]string) {
	t.Helper()
	_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	_, err = cs.CoreV1().ServiceAccounts(name).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create service account in %s: %v", name, err)
	}
}

// waitInjecting waits until the API server has loaded the new webhook
// configuration (it watches for it), using dry-run creations that store nothing.
func waitInjecting(ctx context.Context, t *testing.T, cs kubernetes.Interface, ns string) {
	t.Helper()
	poll(ctx, t, "webhook active", 30*time.Second, func() (bool, error) {
		got, err := cs.CoreV1().Pods(ns).Create(ctx, appPod("probe", true, nil), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err != nil {
			return false, err
		}
		return got.Annotations["keygate.io/status"] == "injected", errors.New("pod not injected yet")
	})
}

func appPod(name string, optIn bool, annotations map[string]string) *corev1.Pod {
	labels := map[string]string{"app": name}
	if optIn {
		labels["keygate.io/inject"] = "true"
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels, Annotations: annotations},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name:  "app",
			Image: "registry.example/shop/app:1",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}},
			ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{
				HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromString("http")},
			}},
		}}},
	}
}

// checkInjectedPod asserts what the API server stored for an injected pod,
// after its own defaulting and validation ran on the patched object.
func checkInjectedPod(t *testing.T, pod *corev1.Pod) {
	t.Helper()
	if pod.Annotations["keygate.io/status"] != "injected" {
		t.Errorf("annotations %v, want keygate.io/status: injected", pod.Annotations)
	}
	var kg *corev1.Container
	for i := range pod.Spec.InitContainers {
		if pod.Spec.InitContainers[i].Name == "keygate" {
			kg = &pod.Spec.InitContainers[i]
		}
	}
	if kg == nil {
		t.Fatalf("no keygate init container; init %d containers %d", len(pod.Spec.InitContainers), len(pod.Spec.Containers))
	}
	if kg.RestartPolicy == nil || *kg.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("keygate restartPolicy %v, want Always (native sidecar)", kg.RestartPolicy)
	}
	if kg.Image != "ghcr.io/keygate/keygate:e2e" || len(kg.Args) != 1 || kg.Args[0] != "serve" {
		t.Errorf("keygate image %s args %v", kg.Image, kg.Args)
	}
	env := map[string]string{}
	for _, e := range kg.Env {
		env[e.Name] = e.Value
	}
	if env["KEYGATE_UPSTREAM_URL"] != "http://127.0.0.1:8080" || env["KEYGATE_LISTEN_ADDR"] != ":8000" {
		t.Errorf("keygate env %v", env)
	}
	if len(kg.EnvFrom) != 1 || kg.EnvFrom[0].SecretRef == nil || kg.EnvFrom[0].SecretRef.Name != "keygate-config" {
		t.Errorf("keygate envFrom %+v", kg.EnvFrom)
	}
	if port, ok := resolveTargetPort(pod, intstr.FromString("http")); !ok || port != 8000 {
		t.Errorf("Service targetPort http resolves to %d (%v), want keygate's 8000", port, ok)
	}
	app := pod.Spec.Containers[0]
	if app.Ports[0].Name != "" || app.ReadinessProbe.HTTPGet.Port != intstr.FromInt32(8080) {
		t.Errorf("app port %+v probe port %v: want the name released and the probe on 8080", app.Ports[0], app.ReadinessProbe.HTTPGet.Port)
	}
	checkHardened(t, &pod.Spec, []corev1.Container{*kg})
}

func checkUntouched(t *testing.T, pod *corev1.Pod) {
	t.Helper()
	if _, ok := pod.Annotations["keygate.io/status"]; ok {
		t.Errorf("pod %s/%s annotated: %v", pod.Namespace, pod.Name, pod.Annotations)
	}
	for _, c := range append(append([]corev1.Container{}, pod.Spec.InitContainers...), pod.Spec.Containers...) {
		if c.Name == "keygate" {
			t.Errorf("pod %s/%s got a keygate container", pod.Namespace, pod.Name)
		}
	}
}

// crdsForDryRun are the CRDs the manifests use, registered without a schema
// (cert-manager and the Prometheus Operator are not installed here), so the
// API server accepts the objects and still checks their envelope.
var crdsForDryRun = []struct{ group, kind, plural string }{
	{"cert-manager.io", "Issuer", "issuers"},
	{"cert-manager.io", "Certificate", "certificates"},
	{"monitoring.coreos.com", "ServiceMonitor", "servicemonitors"},
}

// dryRunManifests applies every object of every kustomization with
// server-side apply and dryRun=All: the API server validates and defaults
// them (and runs admission) without storing anything.
func dryRunManifests(ctx context.Context, t *testing.T, cfg *rest.Config, cs kubernetes.Interface) {
	t.Helper()
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	crdGVR := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	for _, c := range crdsForDryRun {
		doc := fmt.Sprintf(`apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: %[3]s.%[1]s}
spec:
  group: %[1]s
  scope: Namespaced
  names: {kind: %[2]s, plural: %[3]s, singular: %[4]s, listKind: %[2]sList}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
`, c.group, c.kind, c.plural, strings.ToLower(c.kind))
		obj := &unstructured.Unstructured{}
		if err := yaml.Unmarshal([]byte(doc), &obj.Object); err != nil {
			t.Fatal(err)
		}
		if _, err := dyn.Resource(crdGVR).Create(ctx, obj, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("create CRD %s: %v", c.kind, err)
		}
	}

	createFixtureCRDs(ctx, t, dyn, cs)

	all := renderAll(t)
	var mapper meta.RESTMapper
	poll(ctx, t, "CRDs served", 30*time.Second, func() (bool, error) {
		groups, err := restmapper.GetAPIGroupResources(cs.Discovery())
		if err != nil {
			return false, err
		}
		mapper = restmapper.NewDiscoveryRESTMapper(groups)
		for _, c := range crdsForDryRun {
			if _, err := mapper.RESTMapping(schema.GroupKind{Group: c.group, Kind: c.kind}, "v1"); err != nil {
				return false, err
			}
		}
		return true, nil
	})

	const exampleNS = "keygate-example"
	createNamespace(ctx, t, cs, exampleNS, nil)
	applied := 0
	for _, r := range all {
		for _, o := range r.objects {
			obj := &unstructured.Unstructured{}
			if err := yaml.Unmarshal(o.doc, &obj.Object); err != nil {
				t.Fatal(err)
			}
			gvk := obj.GroupVersionKind()
			m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
			if err != nil {
				t.Errorf("%s: %s: %v", r.dir, gvk, err)
				continue
			}
			ri := dyn.Resource(m.Resource)
			var res dynamic.ResourceInterface = ri
			if m.Scope.Name() == meta.RESTScopeNameNamespace {
				ns := obj.GetNamespace()
				if ns == "" {
					ns = exampleNS
				}
				// Namespaces in the build are only dry-run; their objects need them for real.
				createNamespace(ctx, t, cs, ns, nil)
				res = ri.Namespace(ns)
			}
			if strings.HasPrefix(r.dir, "authz"+string(filepath.Separator)) {
				// The recipes' kinds have structural CRDs (testdata/crds):
				// strict validation refuses a field they do not know.
				err = applyStrict(ctx, res, obj)
			} else {
				_, err = res.Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{FieldManager: "keygate-e2e", DryRun: []string{metav1.DryRunAll}, Force: true})
			}
			if err != nil {
				t.Errorf("%s: dry-run apply %s %s: %v", r.dir, gvk.Kind, obj.GetName(), err)
				continue
			}
			applied++
		}
	}
	t.Logf("%d objects from %d kustomizations accepted by server-side dry-run", applied, len(all))
	checkRecipesRefuseTypos(ctx, t, dyn, mapper, exampleNS)
	if applied == 0 {
		t.Error("nothing applied")
	}
}

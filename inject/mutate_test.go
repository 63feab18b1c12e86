package inject_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/keygate/keygate/inject"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// testConfig is the injector configuration every fixture is judged against.
var testConfig = inject.Config{
	Image:         "ghcr.io/keygate/keygate:0.1.0",
	ConfigSecret:  "keygate-config",
	Namespace:     "keygate-system",
	NativeSidecar: true,
}

// golden is what a fixture's answer is compared on: the HTTP status, and for
// a review the decision, its message and the patch as readable JSON.
type golden struct {
	HTTPStatus int             `json:"httpStatus"`
	Body       string          `json:"body,omitempty"`
	Allowed    *bool           `json:"allowed,omitempty"`
	Message    string          `json:"message,omitempty"`
	Patch      json.RawMessage `json:"patch,omitempty"`
}

// TestFixtures posts every testdata/*.review.json to the real handler and
// compares the answer with testdata/*.golden.json (go test -update rewrites
// them). Each fixture's expected outcome is also listed here, so a golden
// file regenerated from a wrong answer still fails.
func TestFixtures(t *testing.T) {
	const (
		patched = "patched"
		noPatch = "allowed, no patch"
		denied  = "denied"
		bad     = "http 400"
	)
	want := map[string]string{
		"opt-in":                    patched,
		"custom-annotations":        patched,
		"several-containers":        patched,
		"named-upstream-annotation": patched,
		"undeclared-upstream-port":  patched,
		"authz-mode":                patched,
		"authz-port-conflict":       denied,
		"unknown-mode":              denied,
		"opt-out":                   noPatch,
		"opt-out-label-false":       noPatch,
		"already-injected":          noPatch,
		"kube-system":               noPatch,
		"own-namespace":             noPatch,
		"update-operation":          noPatch,
		"not-a-pod":                 noPatch,
		"ambiguous-port":            denied,
		"listen-port-conflict":      denied,
		"bad-annotation":            denied,
		"bad-resources":             denied,
		"udp-upstream":              denied,
		"host-network":              denied,
		"malformed-object":          denied,
		"missing-object":            denied,
		"not-json":                  bad,
		"wrong-kind":                bad,
		"no-request":                bad,
		"v1beta1-review":            bad,
		"no-uid":                    bad,
	}
	files, err := filepath.Glob(filepath.Join("testdata", "*.review.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != len(want) {
		t.Errorf("testdata has %d fixtures, the table lists %d: keep them in step", len(files), len(want))
	}
	h := inject.NewHandler(testConfig, nil)
	for _, file := range files {
		name := strings.TrimSuffix(filepath.Base(file), ".review.json")
		t.Run(name, func(t *testing.T) {
			body, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/mutate", bytes.NewReader(body)))
			got := golden{HTTPStatus: rec.Code}
			var review admissionv1.AdmissionReview
			if rec.Code == http.StatusOK {
				if err := json.Unmarshal(rec.Body.Bytes(), &review); err != nil {
					t.Fatalf("answer is not an AdmissionReview: %v\n%s", err, rec.Body)
				}
				checkEnvelope(t, body, &review)
				got.Allowed = &review.Response.Allowed
				if review.Response.Result != nil {
					got.Message = review.Response.Result.Message
				}
				if len(review.Response.Patch) > 0 {
					var buf bytes.Buffer
					if err := json.Indent(&buf, review.Response.Patch, "", "  "); err != nil {
						t.Fatalf("patch is not JSON: %v", err)
					}
					got.Patch = buf.Bytes()
				}
			} else {
				got.Body = rec.Body.String()
			}

			switch outcome := want[name]; {
			case outcome == patched && (got.Allowed == nil || !*got.Allowed || got.Patch == nil):
				t.Errorf("want an allowed review with a patch, got %+v", got)
			case outcome == noPatch && (got.Allowed == nil || !*got.Allowed || got.Patch != nil):
				t.Errorf("want an allowed review without a patch, got %+v", got)
			case outcome == denied && (got.Allowed == nil || *got.Allowed || !strings.HasPrefix(got.Message, "keygate injector: ")):
				t.Errorf("want a denial with a message, got %+v", got)
			case outcome == bad && got.HTTPStatus != http.StatusBadRequest:
				t.Errorf("want HTTP 400, got %+v", got)
			case outcome == "":
				t.Errorf("fixture %s is not listed in the table", name)
			}
			compareGolden(t, filepath.Join("testdata", name+".golden.json"), got)
			if got.Patch != nil {
				checkPatchedPod(t, body, &review)
			}
		})
	}
}

// checkEnvelope asserts the parts of the answer the API server insists on.
func checkEnvelope(t *testing.T, reqBody []byte, got *admissionv1.AdmissionReview) {
	t.Helper()
	var req admissionv1.AdmissionReview
	if err := json.Unmarshal(reqBody, &req); err != nil {
		t.Fatal(err)
	}
	if got.APIVersion != "admission.k8s.io/v1" || got.Kind != "AdmissionReview" {
		t.Errorf("answer is %s %s, want admission.k8s.io/v1 AdmissionReview", got.APIVersion, got.Kind)
	}
	if got.Response == nil || got.Response.UID != req.Request.UID {
		t.Fatalf("answer does not echo uid %q: %+v", req.Request.UID, got.Response)
	}
	if got.Request != nil {
		t.Error("answer repeats the request")
	}
	if len(got.Response.Patch) > 0 && (got.Response.PatchType == nil || *got.Response.PatchType != admissionv1.PatchTypeJSONPatch) {
		t.Errorf("patch type %v, want JSONPatch", got.Response.PatchType)
	}
}

// checkPatchedPod applies the patch the way the API server does and checks
// the result: a valid Pod (decoded strictly), one keygate container, the
// status annotation, the Service's named port now reaching keygate, and no
// second patch when the webhook is invoked again.
func checkPatchedPod(t *testing.T, reqBody []byte, got *admissionv1.AdmissionReview) {
	t.Helper()
	var req admissionv1.AdmissionReview
	if err := json.Unmarshal(reqBody, &req); err != nil {
		t.Fatal(err)
	}
	var before corev1.Pod
	if err := json.Unmarshal(req.Request.Object.Raw, &before); err != nil {
		t.Fatal(err)
	}
	patch, err := jsonpatch.DecodePatch(got.Response.Patch)
	if err != nil {
		t.Fatalf("decode patch: %v", err)
	}
	raw, err := patch.Apply(req.Request.Object.Raw)
	if err != nil {
		t.Fatalf("apply patch: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var after corev1.Pod
	if err := dec.Decode(&after); err != nil {
		t.Fatalf("patched pod does not decode strictly: %v\n%s", err, raw)
	}
	if after.Annotations["keygate.io/status"] != "injected" {
		t.Errorf("status annotation missing: %v", after.Annotations)
	}
	var sidecars []corev1.Container
	for _, c := range append(append([]corev1.Container{}, after.Spec.InitContainers...), after.Spec.Containers...) {
		if c.Name == inject.ContainerName {
			sidecars = append(sidecars, c)
		}
	}
	if len(sidecars) != 1 {
		t.Fatalf("want one keygate container, got %d", len(sidecars))
	}
	kg := sidecars[0]
	sc := kg.SecurityContext
	if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.Capabilities == nil || !cmp.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("keygate security context is not locked down: %+v", sc)
	}
	if kg.ReadinessProbe == nil || kg.ReadinessProbe.HTTPGet == nil || kg.ReadinessProbe.HTTPGet.Path != "/readyz" ||
		kg.LivenessProbe == nil || kg.LivenessProbe.HTTPGet == nil || kg.LivenessProbe.HTTPGet.Path != "/healthz" {
		t.Errorf("keygate probes: readiness %+v liveness %+v", kg.ReadinessProbe, kg.LivenessProbe)
	}
	// Every port name the pod had before now resolves: the app's former
	// serving port name to keygate, the others to where they were.
	for _, c := range before.Spec.Containers {
		for _, p := range c.Ports {
			if p.Name == "" {
				continue
			}
			if _, ok := resolveNamedPort(&after, p.Name); !ok {
				t.Errorf("port name %q no longer resolves", p.Name)
			}
		}
	}
	data := kg.Ports[0]
	if port, ok := resolveNamedPort(&after, data.Name); !ok || port != data.ContainerPort {
		t.Errorf("named port %q resolves to %d (found %v), want keygate's %d", data.Name, port, ok, data.ContainerPort)
	}

	again := req.Request.DeepCopy()
	again.Object.Raw = raw
	ops, err := inject.Mutate(testConfig, again)
	if err != nil || len(ops) != 0 {
		t.Errorf("re-invocation on the patched pod: ops %v, err %v; want nothing", ops, err)
	}
}

// resolveNamedPort follows the endpoints controller's rule for a Service's
// named targetPort: regular containers first, then sidecars (init containers
// with restartPolicy Always); the first TCP port with that name wins.
func resolveNamedPort(pod *corev1.Pod, name string) (int32, bool) {
	match := func(cs []corev1.Container, sidecarsOnly bool) (int32, bool) {
		for _, c := range cs {
			if sidecarsOnly && (c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways) {
				continue
			}
			for _, p := range c.Ports {
				if p.Name == name && (p.Protocol == "" || p.Protocol == corev1.ProtocolTCP) {
					return p.ContainerPort, true
				}
			}
		}
		return 0, false
	}
	if p, ok := match(pod.Spec.Containers, false); ok {
		return p, true
	}
	return match(pod.Spec.InitContainers, true)
}

func compareGolden(t *testing.T, path string, got golden) {
	t.Helper()
	out, err := json.MarshalIndent(got, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	out = append(out, '\n')
	if *update {
		if err := os.WriteFile(path, out, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./inject -run TestFixtures -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), string(out)); diff != "" {
		t.Errorf("answer differs from %s (-want +got):\n%s", path, diff)
	}
}

// TestMutateNoPanic feeds Mutate requests that are odd in every field the
// handler does not check first; none may panic, and opted-in pods that cannot
// be injected must be refused with a reason.
func TestMutateNoPanic(t *testing.T) {
	pod := func(s string) *admissionv1.AdmissionRequest {
		r := &admissionv1.AdmissionRequest{UID: "u", Namespace: "shop", Operation: admissionv1.Create}
		r.Kind.Version, r.Kind.Kind = "v1", "Pod"
		r.Object.Raw = []byte(s)
		return r
	}
	tests := []struct {
		name    string
		cfg     inject.Config
		req     *admissionv1.AdmissionRequest
		wantErr string
	}{
		{"nil request", testConfig, nil, "no request"},
		{"null object", testConfig, pod("null"), ""},
		{"empty object", testConfig, pod("{}"), ""},
		{"labels wrong type", testConfig, pod(`{"metadata":{"labels":["a"]}}`), "decode pod"},
		{"opted in, no containers", testConfig, pod(`{"metadata":{"labels":{"keygate.io/inject":"true"}},"spec":{}}`), "cannot tell which port"},
		{"opted in, listen port out of range", testConfig, pod(`{"metadata":{"labels":{"keygate.io/inject":"true"},"annotations":{"keygate.io/listen-port":"70000"}},"spec":{"containers":[{"name":"a","ports":[{"containerPort":80}]}]}}`), "keygate.io/listen-port"},
		{"opted in, upstream 0", testConfig, pod(`{"metadata":{"labels":{"keygate.io/inject":"true"},"annotations":{"keygate.io/upstream-port":"0"}},"spec":{"containers":[{"name":"a"}]}}`), "keygate.io/upstream-port"},
		{"opted in, unknown port name", testConfig, pod(`{"metadata":{"labels":{"keygate.io/inject":"true"},"annotations":{"keygate.io/upstream-port":"web"}},"spec":{"containers":[{"name":"a"}]}}`), "no container port has that name"},
		{"opted in, request above limit", testConfig, pod(`{"metadata":{"labels":{"keygate.io/inject":"true"},"annotations":{"keygate.io/cpu-request":"2"}},"spec":{"containers":[{"name":"a","ports":[{"containerPort":80}]}]}}`), "above its limit"},
		{"opted in, metrics port is admin port", testConfig, pod(`{"metadata":{"labels":{"keygate.io/inject":"true"},"annotations":{"keygate.io/metrics-port":"9091"}},"spec":{"containers":[{"name":"a","ports":[{"containerPort":80}]}]}}`), "admin port"},
		{"opted in, bad routes name", testConfig, pod(`{"metadata":{"labels":{"keygate.io/inject":"true"},"annotations":{"keygate.io/routes-configmap":"Not_A_Name"}},"spec":{"containers":[{"name":"a","ports":[{"containerPort":80}]}]}}`), "keygate.io/routes-configmap"},
		{"opted in, routes volume name taken", testConfig, pod(`{"metadata":{"labels":{"keygate.io/inject":"true"},"annotations":{"keygate.io/routes-configmap":"r"}},"spec":{"volumes":[{"name":"keygate-routes","emptyDir":{}}],"containers":[{"name":"a","ports":[{"containerPort":80}]}]}}`), "keygate-routes"},
		{"injector without image", inject.Config{ConfigSecret: "s"}, pod(`{"metadata":{"labels":{"keygate.io/inject":"true"}}}`), "KEYGATE_INJECT_IMAGE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ops, err := inject.Mutate(tt.cfg, tt.req)
			if tt.wantErr == "" {
				if err != nil || ops != nil {
					t.Errorf("got ops %v, err %v; want neither", ops, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("err %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

// TestHandlerRoutes checks the HTTP surface around the review.
func TestHandlerRoutes(t *testing.T) {
	h := inject.NewHandler(testConfig, nil)
	tests := []struct {
		method, path string
		body         string
		want         int
	}{
		{http.MethodGet, "/healthz", "", http.StatusOK},
		{http.MethodGet, "/mutate", "", http.StatusMethodNotAllowed},
		{http.MethodPost, "/validate", "{}", http.StatusNotFound},
		{http.MethodPost, "/mutate", "", http.StatusBadRequest},
		{http.MethodPost, "/mutate", `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"1","object":` + strings.Repeat(" ", 5<<20) + `{}}}`, http.StatusRequestEntityTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(tt.method, tt.path, strings.NewReader(tt.body)))
			if rec.Code != tt.want {
				t.Errorf("status %d, want %d: %s", rec.Code, tt.want, rec.Body)
			}
		})
	}
}

// TestMutateNativeSidecarFunc checks that the detector's answer decides where
// keygate goes, that the pod's annotation still overrides it, and that the
// answer is asked only when the annotation is absent.
func TestMutateNativeSidecarFunc(t *testing.T) {
	req := func(ann string) *admissionv1.AdmissionRequest {
		r := &admissionv1.AdmissionRequest{UID: "u", Namespace: "shop", Operation: admissionv1.Create}
		r.Kind.Version, r.Kind.Kind = "v1", "Pod"
		r.Object.Raw = []byte(`{"metadata":{"labels":{"keygate.io/inject":"true"}` + ann + `},"spec":{"containers":[{"name":"a","ports":[{"name":"http","containerPort":8080}]}]}}`)
		return r
	}
	tests := []struct {
		name      string
		detected  bool
		ann       string
		wantPath  string
		wantAsked bool
	}{
		{"detected native", true, "", "/spec/initContainers", true},
		{"detected classic", false, "", "/spec/containers/-", true},
		{"annotation true over classic", false, `,"annotations":{"keygate.io/native-sidecar":"true"}`, "/spec/initContainers", false},
		{"annotation false over native", true, `,"annotations":{"keygate.io/native-sidecar":"false"}`, "/spec/containers/-", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			asked := 0
			cfg := testConfig
			cfg.NativeSidecar = !tt.detected // ignored: the func decides
			cfg.NativeSidecarFunc = func() bool { asked++; return tt.detected }
			ops, err := inject.Mutate(cfg, req(tt.ann))
			if err != nil {
				t.Fatal(err)
			}
			last := ops[len(ops)-1]
			if last.Path != tt.wantPath {
				t.Errorf("keygate added at %s, want %s", last.Path, tt.wantPath)
			}
			if (asked > 0) != tt.wantAsked || asked > 1 {
				t.Errorf("NativeSidecarFunc called %d times, want asked = %v (at most once)", asked, tt.wantAsked)
			}
		})
	}
}

// TestMutateAuthzMode: keygate.io/mode=authz adds keygate beside the pod's
// own proxy: no port of the pod is renamed or taken over, keygate has no
// upstream and listens on its two authorization ports; mode=proxy is the
// default, and an unknown mode is refused.
func TestMutateAuthzMode(t *testing.T) {
	review := func(mode string) *admissionv1.AdmissionRequest {
		body, err := os.ReadFile(filepath.Join("testdata", "authz-mode.review.json"))
		if err != nil {
			t.Fatal(err)
		}
		var r admissionv1.AdmissionReview
		if err := json.Unmarshal(body, &r); err != nil {
			t.Fatal(err)
		}
		var pod corev1.Pod
		if err := json.Unmarshal(r.Request.Object.Raw, &pod); err != nil {
			t.Fatal(err)
		}
		if mode == "" {
			delete(pod.Annotations, "keygate.io/mode")
		} else {
			pod.Annotations["keygate.io/mode"] = mode
		}
		if r.Request.Object.Raw, err = json.Marshal(&pod); err != nil {
			t.Fatal(err)
		}
		return r.Request
	}
	ops, err := inject.Mutate(testConfig, review("authz"))
	if err != nil {
		t.Fatal(err)
	}
	var kg *corev1.Container
	for _, op := range ops {
		if strings.HasPrefix(op.Path, "/spec/containers") {
			t.Errorf("authz mode changes the pod's containers: %+v", op)
		}
		if op.Path == "/spec/initContainers" {
			b, _ := json.Marshal(op.Value)
			var cs []corev1.Container
			if err := json.Unmarshal(b, &cs); err != nil || len(cs) != 1 {
				t.Fatalf("init containers %s: %v", b, err)
			}
			kg = &cs[0]
		}
	}
	if kg == nil {
		t.Fatalf("no keygate container in %+v", ops)
	}
	env := map[string]string{}
	for _, e := range kg.Env {
		env[e.Name] = e.Value
	}
	if _, ok := env["KEYGATE_UPSTREAM_URL"]; ok || env["KEYGATE_AUTHZ_GRPC_ADDR"] != ":9001" || env["KEYGATE_AUTHZ_ADDR"] != ":9002" ||
		env["KEYGATE_LISTEN_ADDR"] != "127.0.0.1:0" {
		t.Errorf("authz-mode environment %v", env)
	}

	proxyOps, err := inject.Mutate(testConfig, review("proxy"))
	if err != nil {
		t.Fatal(err)
	}
	defaultOps, err := inject.Mutate(testConfig, review(""))
	if err != nil {
		t.Fatal(err)
	}
	if !cmp.Equal(proxyOps, defaultOps) {
		t.Errorf("mode=proxy differs from the default:\n%s", cmp.Diff(defaultOps, proxyOps))
	}
	if _, err := inject.Mutate(testConfig, review("Authz")); err == nil || !strings.Contains(err.Error(), "keygate.io/mode") {
		t.Errorf("unknown mode: %v", err)
	}
}

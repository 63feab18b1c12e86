package inject_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	admissionv1 "k8s.io/api/admission/v1"

	"github.com/keygate/keygate/inject"
)

// FuzzAdmissionReview posts arbitrary bodies to /mutate: the handler must
// not panic and must answer either 400/413, or a well-formed
// AdmissionReview that echoes the request's uid, whose denial carries a
// message and whose patch applies to the pod and leaves nothing to do when
// the webhook is invoked again.
func FuzzAdmissionReview(f *testing.F) {
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"version":"v1","kind":"Pod"},"namespace":"shop","operation":"CREATE","object":{"metadata":{"labels":{"keygate.io/inject":"true"}},"spec":{"containers":[{"name":"a","ports":[{"containerPort":80}]}]}}}}`))
	h := inject.NewHandler(testConfig, nil)
	f.Fuzz(func(t *testing.T, body []byte) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/mutate", bytes.NewReader(body)))
		switch rec.Code {
		case http.StatusOK:
		case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
			return
		default:
			t.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
		if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type %q", ct)
		}
		var got admissionv1.AdmissionReview
		if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
			t.Fatalf("answer is not an AdmissionReview: %v\n%s", err, rec.Body)
		}
		checkEnvelope(t, body, &got)
		resp := got.Response
		if !resp.Allowed {
			if resp.Result == nil || !strings.HasPrefix(resp.Result.Message, "keygate injector: ") || len(resp.Patch) > 0 {
				t.Fatalf("denial without a message, or with a patch: %+v", resp)
			}
			return
		}
		if len(resp.Patch) == 0 {
			return
		}
		var req admissionv1.AdmissionReview
		if err := json.Unmarshal(body, &req); err != nil {
			t.Fatal(err)
		}
		patch, err := jsonpatch.DecodePatch(resp.Patch)
		if err != nil {
			t.Fatalf("decode patch: %v\n%s", err, resp.Patch)
		}
		raw, err := patch.Apply(req.Request.Object.Raw)
		if err != nil {
			t.Fatalf("apply patch: %v\npatch %s\npod %s", err, resp.Patch, req.Request.Object.Raw)
		}
		again := req.Request.DeepCopy()
		again.Object.Raw = raw
		if ops, err := inject.Mutate(testConfig, again); err != nil || len(ops) != 0 {
			t.Fatalf("re-invocation on the patched pod: ops %v, err %v; want nothing\npod %s", ops, err, raw)
		}
	})
}

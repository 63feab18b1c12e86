// Package inject is keygate's mutating admission webhook (`keygate inject`).
//
// The API server sends it an AdmissionReview v1 for every Pod created in a
// namespace labelled keygate.io/inject=enabled; for pods labelled
// keygate.io/inject="true" it answers with a JSONPatch that adds the keygate
// sidecar in front of the pod's serving port. The package is split so the
// decision can be tested without a network:
//
//   - Mutate is pure: an AdmissionRequest and a Config in, patch operations out.
//   - NewHandler wraps Mutate in the HTTP and AdmissionReview envelope.
//   - Run reads KEYGATE_INJECT_* from the environment and serves HTTPS with a
//     certificate that is re-read when its files change (cert-manager rotates it
//     in place).
//
// It lives outside cmd/keygate so the webhook's tests can run it in-process, and
// outside proxy because it shares nothing with the data path.
package inject

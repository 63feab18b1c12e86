// Package inject is keygate's mutating admission webhook (`keygate inject`).
//
// The API server sends it an AdmissionReview v1 for every Pod created in a
// namespace labelled keygate.io/inject=enabled; for pods labelled
// keygate.io/inject="true" it answers with a JSONPatch that adds the keygate
// sidecar in front of the pod's serving port, or, with the annotation
// keygate.io/mode=authz, beside the pod's own proxy as an authorization
// service that takes over no port. The package is split so the decision can
// be tested without a network:
//
//   - Mutate is pure: an AdmissionRequest and a Config in, patch operations out.
//   - NewHandler wraps Mutate in the HTTP and AdmissionReview envelope.
//   - Run reads KEYGATE_INJECT_* from the environment and serves HTTPS with a
//     certificate that is re-read when its files change (cert-manager rotates it
//     in place).
//   - With KEYGATE_INJECT_NATIVE_SIDECAR=auto (the default) Run asks the API
//     server for its version (GET /version, public to every client through the
//     built-in system:public-info-viewer role) before serving and every 10
//     minutes after: keygate is added as a native sidecar (an init container
//     with restartPolicy Always) when the server is 1.29 or later, as a classic
//     second container otherwise, and as a classic container while the version
//     cannot be learned (it works on every version). The answer reaches Mutate
//     through Config.NativeSidecarFunc; true or false skip the question. The
//     keygate.io/native-sidecar annotation overrides either per pod. The API
//     server is found as client-go finds it in a pod (KUBERNETES_SERVICE_HOST,
//     KUBERNETES_SERVICE_PORT, the mounted service account's ca.crt and token),
//     or from KEYGATE_INJECT_KUBE_API, KEYGATE_INJECT_KUBE_CA and
//     KEYGATE_INJECT_KUBE_TOKEN (files) outside a cluster.
//
// It lives outside cmd/keygate so the webhook's tests can run it in-process, and
// outside proxy because it shares nothing with the data path.
package inject

// Package deploytest holds only tests: strict decoding of every manifest under
// deploy/kubernetes, kustomize rendering of every kustomization, BuildKit's
// linter on the Dockerfile, and (with -tags e2ek8s) the injector against a real
// kube-apiserver. See the module comment in go.mod for why it is separate.
package deploytest

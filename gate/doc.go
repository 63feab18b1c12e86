// Package gate decides whether a request may pass.
//
// A front (the reverse proxy, the self-served APIs, an authorization
// endpoint) hands Decide the facts of a request — method, path, query,
// headers, client address, time — and gets back a Verdict: the principal,
// the route rule's permission and cost, the charge and its result, and the
// headers the caller should see; or a refusal, an error that Classify turns
// into the one status, message and Retry-After every front renders in its
// own envelope. gate owns the credential forms (credential.go), signed
// requests (signing.go), route rules (rules.go), the failure modes, and the
// error classification (problem.go).
//
// gate imports the domain (keys, quota) and metrics; it imports no
// httputil, does no forwarding, has no route table and knows no front.
package gate

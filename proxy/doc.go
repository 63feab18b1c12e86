// Package proxy is keygate's data path: the front that forwards.
//
// Handler asks the gate whether a request may pass and, when it may,
// forwards it with httputil.ReverseProxy (Rewrite): credentials stripped,
// client-sent identity headers dropped and keygate's own added, streamed
// responses flushed as they come, the client's stalls bounded by
// per-read and per-write deadlines, ingress and egress bytes and the
// upstream's X-Keygate-Usage report booked for the organization.
//
// proxy imports the decision (gate), the listener base, meter, metrics and
// the domain, never another front nor an adapter: sidecar wires them.
package proxy

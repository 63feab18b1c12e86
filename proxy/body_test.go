package proxy_test

import (
	"testing"

	"github.com/keygate/keygate/sidecar"
)

// TestUnreadableBodyIsTheClients: a chunked body that breaks while it is
// forwarded (here a chunk line ended by a bare LF, which net/http refuses)
// is the client's fault: 400, not the upstream's 502.
func TestUnreadableBodyIsTheClients(t *testing.T) {
	e := newHostileEnv(t, sidecar.Options{})
	rw := e.key(t, "rw", "read", "write")
	resp, body := raw(t, e.base, "POST /hello HTTP/1.1\r\nHost: x\r\nX-API-Key: "+rw+"\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n")
	if resp.StatusCode != 400 || body != `{"error":true,"statusCode":400,"message":"Request body could not be read"}` {
		t.Errorf("a broken chunked body: %d %s, want 400", resp.StatusCode, body)
	}
	// A well-formed one still goes through.
	if resp, body := raw(t, e.base, "POST /hello HTTP/1.1\r\nHost: x\r\nX-API-Key: "+rw+"\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"); resp.StatusCode != 200 {
		t.Errorf("a good chunked body: %d %s", resp.StatusCode, body)
	}
	if got := e.up.take(); len(got) != 2 {
		t.Errorf("the upstream received %d requests, want 2 (the broken body's head and the good one)", len(got))
	}
}

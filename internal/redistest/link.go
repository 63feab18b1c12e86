package redistest

import (
	"io"
	"net"
	"sync"
	"testing"
)

// Link is a loopback TCP forwarder in front of a server that a test can cut
// and restore, to disconnect one client (a sidecar) while others keep
// talking to the server: Cut closes every connection through it and refuses
// new ones until Restore.
type Link struct {
	target string
	l      net.Listener

	mu    sync.Mutex
	cut   bool
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// NewLink starts a link to target (host:port), closed when t ends.
func NewLink(t testing.TB, target string) *Link {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("link listen: %v", err)
	}
	k := &Link{target: target, l: l, conns: make(map[net.Conn]struct{})}
	k.wg.Add(1)
	go k.accept()
	t.Cleanup(k.close)
	return k
}

// Addr is where clients connect instead of the server.
func (k *Link) Addr() string { return k.l.Addr().String() }

// Cut closes every open connection and refuses new ones.
func (k *Link) Cut() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.cut = true
	for c := range k.conns {
		_ = c.Close()
	}
	clear(k.conns)
}

// Restore lets connections through again.
func (k *Link) Restore() {
	k.mu.Lock()
	k.cut = false
	k.mu.Unlock()
}

func (k *Link) close() {
	_ = k.l.Close()
	k.Cut()
	k.wg.Wait()
}

func (k *Link) accept() {
	defer k.wg.Done()
	for {
		in, err := k.l.Accept()
		if err != nil {
			return
		}
		k.mu.Lock()
		if k.cut {
			k.mu.Unlock()
			_ = in.Close()
			continue
		}
		out, err := net.Dial("tcp", k.target)
		if err != nil {
			k.mu.Unlock()
			_ = in.Close()
			continue
		}
		k.conns[in], k.conns[out] = struct{}{}, struct{}{}
		k.wg.Add(2)
		k.mu.Unlock()
		go k.pipe(in, out)
		go k.pipe(out, in)
	}
}

// pipe copies src to dst until either breaks, then closes both.
func (k *Link) pipe(dst, src net.Conn) {
	defer k.wg.Done()
	_, _ = io.Copy(dst, src)
	_ = dst.Close()
	_ = src.Close()
	k.mu.Lock()
	delete(k.conns, dst)
	delete(k.conns, src)
	k.mu.Unlock()
}

package redistest

import (
	"bytes"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// ReplyDropper is a loopback TCP forwarder in front of a server that, once
// armed, lets the next script call (EVALSHA or EVAL) through, waits for the
// server's reply and, instead of relaying it, closes the client's
// connection: the call ran, its reply is lost. Each drop disarms it and is
// reported on Dropped.
type ReplyDropper struct {
	target string
	l      net.Listener
	armed  atomic.Bool
	// Dropped receives one value per reply dropped.
	Dropped chan struct{}

	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

// NewReplyDropper starts a dropper to target (host:port), closed when t
// ends.
func NewReplyDropper(t testing.TB, target string) *ReplyDropper {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("reply dropper listen: %v", err)
	}
	d := &ReplyDropper{target: target, l: l, Dropped: make(chan struct{}, 64)}
	d.wg.Go(d.accept)
	t.Cleanup(func() {
		_ = l.Close()
		d.mu.Lock()
		for _, c := range d.conns {
			_ = c.Close()
		}
		d.mu.Unlock()
		d.wg.Wait()
	})
	return d
}

// Addr is where clients connect instead of the server.
func (d *ReplyDropper) Addr() string { return d.l.Addr().String() }

// Arm makes the dropper drop the reply of the next script call.
func (d *ReplyDropper) Arm() { d.armed.Store(true) }

func (d *ReplyDropper) accept() {
	for {
		client, err := d.l.Accept()
		if err != nil {
			return // closed
		}
		server, err := net.Dial("tcp", d.target)
		if err != nil {
			_ = client.Close()
			continue
		}
		d.mu.Lock()
		d.conns = append(d.conns, client, server)
		d.mu.Unlock()
		var drop atomic.Bool
		d.wg.Go(func() { d.up(client, server, &drop) })
		d.wg.Go(func() { d.down(server, client, &drop) })
	}
}

// up relays client to server, marking the connection when an armed
// dropper sees a script call go by.
func (d *ReplyDropper) up(client, server net.Conn, drop *atomic.Bool) {
	defer server.Close()
	buf := make([]byte, 64<<10)
	for {
		n, err := client.Read(buf)
		if n > 0 {
			low := bytes.ToLower(buf[:n])
			script := bytes.Contains(low, []byte("\r\nevalsha\r\n")) || bytes.Contains(low, []byte("\r\neval\r\n"))
			if script && d.armed.CompareAndSwap(true, false) {
				drop.Store(true) // before the server can answer
			}
			if _, werr := server.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// down relays server to client, or drops the reply to a marked call.
func (d *ReplyDropper) down(server, client net.Conn, drop *atomic.Bool) {
	defer client.Close()
	buf := make([]byte, 64<<10)
	for {
		n, err := server.Read(buf)
		if n > 0 {
			if drop.Load() {
				_ = server.Close()
				select {
				case d.Dropped <- struct{}{}:
				default:
				}
				return
			}
			if _, werr := client.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

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
// reported on Dropped. Hold instead keeps the next script call's reply back
// until Release: the call ran, its reply is late.
type ReplyDropper struct {
	target string
	l      net.Listener
	armed  atomic.Bool
	// Dropped receives one value per reply dropped.
	Dropped chan struct{}
	// Held receives one value when a held reply is ready to be sent.
	Held     chan struct{}
	holding  atomic.Bool
	release  chan struct{}
	released sync.Once

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
	d := &ReplyDropper{target: target, l: l, Dropped: make(chan struct{}, 64), Held: make(chan struct{}, 1), release: make(chan struct{})}
	d.wg.Go(d.accept)
	t.Cleanup(func() {
		d.Release()
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

// Hold makes the dropper keep back the reply of the next script call until
// Release (once per dropper).
func (d *ReplyDropper) Hold() { d.holding.Store(true) }

// Release sends the held reply.
func (d *ReplyDropper) Release() { d.released.Do(func() { close(d.release) }) }

// What a connection does with the next reply.
const (
	relay int32 = iota
	drop
	hold
)

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
		var next atomic.Int32
		d.wg.Go(func() { d.up(client, server, &next) })
		d.wg.Go(func() { d.down(server, client, &next) })
	}
}

// up relays client to server, marking the connection when an armed
// dropper sees a script call go by.
func (d *ReplyDropper) up(client, server net.Conn, next *atomic.Int32) {
	defer server.Close()
	buf := make([]byte, 64<<10)
	for {
		n, err := client.Read(buf)
		if n > 0 {
			low := bytes.ToLower(buf[:n])
			script := bytes.Contains(low, []byte("\r\nevalsha\r\n")) || bytes.Contains(low, []byte("\r\neval\r\n"))
			switch { // before the server can answer
			case script && d.armed.CompareAndSwap(true, false):
				next.Store(drop)
			case script && d.holding.CompareAndSwap(true, false):
				next.Store(hold)
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

// down relays server to client, or drops or holds the reply to a marked
// call.
func (d *ReplyDropper) down(server, client net.Conn, next *atomic.Int32) {
	defer client.Close()
	buf := make([]byte, 64<<10)
	for {
		n, err := server.Read(buf)
		if n > 0 {
			if next.CompareAndSwap(hold, relay) {
				select {
				case d.Held <- struct{}{}:
				default:
				}
				<-d.release
			}
			if next.Load() == drop {
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

package rediscounter

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Charges from concurrent requests, and the calls of lease holders, meter
// bookings and lease mark reads, are sent to Redis in pipelines: a call
// that finds fewer than maxPipelines in flight goes out at once, together
// with any that queued up meanwhile; the others wait for the next pipeline.
// Alone, a call goes out immediately (no added latency); under load, or
// when a lease holder's tick starts the calls of many organizations at
// once, one write and one read carry many calls, which saves system calls
// on both sides: on a 2-core machine a lone script call costs Redis 20 to
// 50 µs of CPU, most of it the round trip's, and one in a pipeline of ten
// about 7 µs. Each call is still its own atomic script call (or command),
// so no rule changes; a pipeline that go-redis retries after a lost reply
// retries each call, as it would retry the call alone: charges carry their
// token and lease settlements their number, so they count nothing twice.
//
// Background calls (lease holders' renewals and settlements, mark reads,
// meter bookings), which no request waits for, gather for up to gatherFor
// before their pipeline leaves: a lease holder's tick and a meter flush
// start the calls of many organizations at once, and without the pause
// the first calls would leave one by one, each in a pipeline of its own.
const (
	maxPipelines = 4
	maxBatch     = 128
	gatherFor    = time.Millisecond
	// maxPipelineWait bounds a pipeline that carries a call without a
	// deadline.
	maxPipelineWait = 10 * time.Second
)

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// call is one script call (or, with no script, the command args) waiting
// for its pipeline.
type call struct {
	ctx    context.Context
	script *redis.Script
	keys   []string
	args   []any
	done   chan struct{}
	val    any
	err    error
	// later: a background call (runLater).
	later bool
}

// batcher groups script calls into pipelines. Its zero value is ready.
type batcher struct {
	mu       sync.Mutex
	queue    []*call
	inflight int
	// gathering: a drain starts after gatherFor, for background calls.
	gathering bool
}

// run executes script with keys and args, batched with concurrent calls,
// and returns its reply. It returns when the reply is in or ctx ends,
// whichever comes first: a pipeline kept alive for other calls never holds
// this one past its own deadline.
func (c *Counter) run(ctx context.Context, script *redis.Script, keys []string, args ...any) (any, error) {
	return c.enqueue(&call{ctx: ctx, script: script, keys: keys, args: args, done: make(chan struct{})})
}

// runLater is run for a background call: it gathers with the calls that
// come within gatherFor (see above).
func (c *Counter) runLater(ctx context.Context, script *redis.Script, keys []string, args ...any) (any, error) {
	return c.enqueue(&call{ctx: ctx, script: script, keys: keys, args: args, done: make(chan struct{}), later: true})
}

// doLater runs one command (args, e.g. "HGET", key, field) in the
// background, batched as runLater's scripts are.
func (c *Counter) doLater(ctx context.Context, args ...any) (any, error) {
	return c.enqueue(&call{ctx: ctx, args: args, done: make(chan struct{}), later: true})
}

// enqueue queues cl for a pipeline and waits for its reply or its end.
func (c *Counter) enqueue(cl *call) (any, error) {
	ctx := cl.ctx
	b := &c.batch
	b.mu.Lock()
	b.queue = append(b.queue, cl)
	switch {
	case b.inflight >= maxPipelines:
		// A pipeline in flight takes it next.
	case !cl.later:
		b.inflight++
		go c.drain() // takes this call and whatever queues meanwhile
	case !b.gathering:
		b.inflight++
		b.gathering = true
		time.AfterFunc(gatherFor, func() {
			b.mu.Lock()
			b.gathering = false
			b.mu.Unlock()
			c.drain()
		})
	}
	b.mu.Unlock()
	select {
	case <-cl.done:
		return cl.val, cl.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// take removes up to maxBatch queued calls. Called with mu held.
func (b *batcher) take() []*call {
	n := min(len(b.queue), maxBatch)
	batch := b.queue[:n:n]
	b.queue = b.queue[n:]
	if len(b.queue) == 0 {
		b.queue = nil
	}
	return batch
}

// drain sends queued calls in pipelines until none is left, then gives up
// its pipeline slot.
func (c *Counter) drain() {
	b := &c.batch
	for {
		b.mu.Lock()
		if len(b.queue) == 0 {
			b.inflight--
			b.mu.Unlock()
			return
		}
		batch := b.take()
		b.mu.Unlock()
		c.exec(batch)
	}
}

// exec sends one pipeline of EVALSHA calls, falls back to EVAL for any that
// find the script missing (NOSCRIPT), and completes every call.
func (c *Counter) exec(batch []*call) {
	live := batch[:0:0]
	var deadline time.Time
	for _, cl := range batch {
		if err := cl.ctx.Err(); err != nil {
			cl.err = err
			close(cl.done)
			continue
		}
		d, ok := cl.ctx.Deadline()
		if !ok {
			d = time.Now().Add(maxPipelineWait)
		}
		deadline = later(deadline, d)
		live = append(live, cl)
	}
	if len(live) == 0 {
		return
	}
	// The pipeline lives until the latest deadline among its calls, so one
	// call that waited long in the queue cannot fail the others; each caller
	// still stops waiting at its own deadline (run). It is not cancelled by a
	// caller going away.
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	cmds := c.pipeline(ctx, live, func(p redis.Pipeliner, cl *call) *redis.Cmd {
		if cl.script == nil {
			return p.Do(ctx, cl.args...)
		}
		return cl.script.EvalSha(ctx, p, cl.keys, cl.args...)
	})
	var missing []*call
	for i, cl := range live {
		if err := cmds[i].Err(); cl.script != nil && (errors.Is(err, redis.ErrNoScript) || redis.HasErrorPrefix(err, "NOSCRIPT")) {
			missing = append(missing, cl)
			continue
		}
		cl.val, cl.err = cmds[i].Result()
		close(cl.done)
	}
	if len(missing) == 0 {
		return
	}
	cmds = c.pipeline(ctx, missing, func(p redis.Pipeliner, cl *call) *redis.Cmd {
		return cl.script.Eval(ctx, p, cl.keys, cl.args...)
	})
	for i, cl := range missing {
		cl.val, cl.err = cmds[i].Result()
		close(cl.done)
	}
}

func (c *Counter) pipeline(ctx context.Context, calls []*call, add func(redis.Pipeliner, *call) *redis.Cmd) []*redis.Cmd {
	cmds := make([]*redis.Cmd, len(calls))
	p := c.rdb.Pipeline()
	for i, cl := range calls {
		cmds[i] = add(p, cl)
	}
	_, _ = p.Exec(ctx) // every command carries its own error
	return cmds
}

// int64s reads a script's reply of integers (or decimal strings), as
// go-redis's Cmd.Int64Slice does.
func int64s(v any, err error) ([]int64, error) {
	if err != nil {
		return nil, err
	}
	vals, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("script reply of type %T, want an array", v)
	}
	out := make([]int64, len(vals))
	for i, x := range vals {
		switch n := x.(type) {
		case int64:
			out[i] = n
		case string:
			if out[i], err = strconv.ParseInt(n, 10, 64); err != nil {
				return nil, fmt.Errorf("script reply %d: %w", i, err)
			}
		default:
			return nil, fmt.Errorf("script reply %d of type %T", i, x)
		}
	}
	return out, nil
}

package rediscounter

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Charges from concurrent requests are sent to Redis in pipelines: a request
// that finds fewer than maxPipelines in flight sends its own charge at once,
// together with any that queued up meanwhile; the others wait for the next
// pipeline. Alone, a charge goes out immediately (no added latency); under
// load, one write and one read carry many charges, which saves system calls
// on both sides. Each charge is still its own atomic script call, so the
// quota rule is unchanged, and each carries its token, so a pipeline that
// go-redis retries after a lost reply counts nothing twice.
const (
	maxPipelines = 4
	maxBatch     = 128
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

// call is one script call waiting for its pipeline.
type call struct {
	ctx  context.Context
	keys []string
	args []any
	done chan struct{}
	val  any
	err  error
}

// batcher groups script calls into pipelines. Its zero value is ready.
type batcher struct {
	mu       sync.Mutex
	queue    []*call
	inflight int
}

// run executes the charge script with keys and args, batched with
// concurrent calls, and returns its reply. It returns when the reply is in
// or ctx ends, whichever comes first: a pipeline kept alive for other calls
// never holds this one past its own deadline.
func (c *Counter) run(ctx context.Context, keys []string, args []any) (any, error) {
	cl := &call{ctx: ctx, keys: keys, args: args, done: make(chan struct{})}
	b := &c.batch
	b.mu.Lock()
	b.queue = append(b.queue, cl)
	if b.inflight < maxPipelines {
		b.inflight++
		go c.drain() // takes this call and whatever queues meanwhile
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
		return chargeScript.EvalSha(ctx, p, cl.keys, cl.args...)
	})
	var missing []*call
	for i, cl := range live {
		if err := cmds[i].Err(); errors.Is(err, redis.ErrNoScript) || redis.HasErrorPrefix(err, "NOSCRIPT") {
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
		return chargeScript.Eval(ctx, p, cl.keys, cl.args...)
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

package main

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keygate/keygate/internal/redistest"
)

// The client keygate builds has small buffers (redisBufferSize): replies
// and commands far larger than them must still go through whole.
func TestRedisClientLargeValues(t *testing.T) {
	srv := redistest.Start(t)
	rc, err := newRedisClient(srv.URL(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	ctx := context.Background()
	big := strings.Repeat("0123456789abcdef", 1<<16) // 1 MiB
	if err := rc.Set(ctx, "big", big, 0).Err(); err != nil {
		t.Fatal(err)
	}
	if got, err := rc.Get(ctx, "big").Result(); err != nil || got != big {
		t.Fatalf("a 1 MiB value read back as %d bytes, %v", len(got), err)
	}
	fields := make([]any, 0, 20000)
	for i := range 10000 {
		fields = append(fields, "field-"+strconv.Itoa(i), strings.Repeat("v", 40))
	}
	if err := rc.HSet(ctx, "h", fields...).Err(); err != nil {
		t.Fatal(err)
	}
	if got, err := rc.HGetAll(ctx, "h").Result(); err != nil || len(got) != 10000 {
		t.Fatalf("HGETALL of 10,000 fields: %d, %v", len(got), err)
	}
	// The pipeline pool's buffers (redisPipelineBufferSize) too.
	var get *redis.StringCmd
	var all *redis.MapStringStringCmd
	if _, err := rc.Pipelined(ctx, func(p redis.Pipeliner) error {
		get, all = p.Get(ctx, "big"), p.HGetAll(ctx, "h")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if get.Val() != big || len(all.Val()) != 10000 {
		t.Fatalf("pipelined: %d bytes, %d fields", len(get.Val()), len(all.Val()))
	}
}

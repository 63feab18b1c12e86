package rediscounter

import (
	_ "embed"
	"math"
	"reflect"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keygate/keygate/internal/redistest"
	"github.com/keygate/keygate/quota"
)

// addV1Src is add.lua as it was before it spared GET and EXPIREAT (commit
// 4a9000a): meters it booked must keep counting and expiring.
//
//go:embed testdata/add_v1.lua
var addV1Src string

var addV1 = redis.NewScript(addV1Src)

// TestMeterCommands: booking a meter that exists costs one INCRBY per
// meter; a new counter gets its expiry, which later bookings keep; totals
// past 2^53 come back exact.
func TestMeterCommands(t *testing.T) {
	rdb := newTestClient(t, redistest.Start(t).Addr())
	c := New(rdb)
	ctx := t.Context()
	now := time.Now()
	egress := quota.Meter{Name: "egress", Period: quota.PeriodHour}
	pinned := quota.Meter{Name: "pinned", Period: quota.PeriodNone}
	w := egress.Period.Window(now)
	key := meterKey("org1", "egress", w.ID)
	add := func(want []int64, deltas ...quota.MeterDelta) map[string]string {
		t.Helper()
		if err := rdb.ConfigResetStat(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		got, err := c.Add(ctx, "org1", now, deltas)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("Add = %v, want %v", got, want)
		}
		calls := commandCalls(t, ctx, rdb)
		delete(calls, "cmdstat_hello") // a pipeline may open a connection
		return calls
	}
	wantExpiry := func() {
		t.Helper()
		got, err := rdb.ExpireTime(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		if want := w.ExpireAt().Unix(); int64(got/time.Second) != want {
			t.Errorf("EXPIRETIME %s = %d, want %d", key, int64(got/time.Second), want)
		}
	}
	calls := add([]int64{500}, quota.MeterDelta{Meter: egress, Delta: 500})
	if want := map[string]string{"cmdstat_incrby": "calls=1", "cmdstat_expireat": "calls=1"}; !reflect.DeepEqual(calls, want) {
		t.Errorf("booking a new meter ran %v, want %v", calls, want)
	}
	wantExpiry()
	calls = add([]int64{507, 1000, 1010}, quota.MeterDelta{Meter: egress, Delta: 7}, quota.MeterDelta{Meter: pinned, Delta: 1000}, quota.MeterDelta{Meter: pinned, Delta: 10})
	if want := map[string]string{"cmdstat_incrby": "calls=3"}; !reflect.DeepEqual(calls, want) {
		t.Errorf("booking meters that exist (or never expire) ran %v, want %v", calls, want)
	}
	wantExpiry()
	// Past 2^53 the total is read as Redis keeps it.
	big := int64(1<<53) + 1
	add([]int64{1010 + big}, quota.MeterDelta{Meter: pinned, Delta: big})
	add([]int64{math.MaxInt64}, quota.MeterDelta{Meter: pinned, Delta: math.MaxInt64 - 1010 - big})
	// Back at zero and up again: the expiry is set again, to the same instant.
	add([]int64{0, 3}, quota.MeterDelta{Meter: egress, Delta: -507}, quota.MeterDelta{Meter: egress, Delta: 3})
	wantExpiry()
}

// TestMeterUpgrade: a meter the previous add.lua created keeps its total
// and its expiry when this version books into it, and the other way round.
func TestMeterUpgrade(t *testing.T) {
	rdb := newTestClient(t, redistest.Start(t).Addr())
	c := New(rdb)
	ctx := t.Context()
	now := time.Now()
	egress := quota.Meter{Name: "egress", Period: quota.PeriodHour}
	w := egress.Period.Window(now)
	key := meterKey("org1", "egress", w.ID)
	if err := addV1.Run(ctx, rdb, []string{key}, 40, w.ExpireAt().Unix()).Err(); err != nil {
		t.Fatal(err)
	}
	got, err := c.Add(ctx, "org1", now, []quota.MeterDelta{{Meter: egress, Delta: 2}})
	if err != nil || !reflect.DeepEqual(got, []int64{42}) {
		t.Fatalf("Add after the old script = %v, %v; want [42]", got, err)
	}
	old, err := addV1.Run(ctx, rdb, []string{key}, 8, w.ExpireAt().Unix()).Int64Slice()
	if err != nil || !reflect.DeepEqual(old, []int64{50}) {
		t.Fatalf("old script after the new = %v, %v; want [50]", old, err)
	}
	exp, err := rdb.ExpireTime(ctx, key).Result()
	if err != nil || int64(exp/time.Second) != w.ExpireAt().Unix() {
		t.Errorf("EXPIRETIME = %s, %v; want %d", exp, err, w.ExpireAt().Unix())
	}
}

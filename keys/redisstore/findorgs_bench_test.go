package redisstore_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/keygate/keygate/internal/redistest"
	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/keys/redisstore"
)

// BenchmarkFindOrgs10k is the console's organization list on a store of
// 10,000 organizations: a page of 50 by id, and a search page, beside
// listing them all.
func BenchmarkFindOrgs10k(b *testing.B) {
	rdb := redistest.Client(b)
	s := redisstore.New(rdb)
	ctx := context.Background()
	for i := range 10000 {
		o := keys.Org{ID: fmt.Sprintf("org-%05d", i), Name: fmt.Sprintf("Customer %d Inc", i), Email: fmt.Sprintf("ops%d@c%d.example", i, i%100),
			PlanID: 1, CreatedAt: time.Now()}
		if err := s.CreateOrg(ctx, o); err != nil {
			b.Fatal(err)
		}
	}
	terms, err := rdb.ZCard(ctx, "kg:orgterms").Result()
	if err != nil {
		b.Fatal(err)
	}
	mem, err := rdb.MemoryUsage(ctx, "kg:orgterms", 0).Result()
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("search index: %d terms, %d bytes (%.1f terms, %d bytes per organization)", terms, mem, float64(terms)/10000, mem/10000)
	// What a page would cost without FindOrgs: every organization.
	b.Run("Orgs-all", func(b *testing.B) {
		for b.Loop() {
			if os, err := s.Orgs(ctx); err != nil || len(os) != 10000 {
				b.Fatalf("%d orgs, %v", len(os), err)
			}
		}
	})
	for name, q := range map[string]keys.OrgQuery{
		"page":          {Limit: 50, After: "org-05000"},
		"search-prefix": {Search: "customer 12", Limit: 50},
		"search-domain": {Search: "c7.example", Limit: 50},
	} {
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				if p, err := s.FindOrgs(ctx, q); err != nil || len(p.Orgs) == 0 {
					b.Fatalf("%d orgs, %v", len(p.Orgs), err)
				}
			}
		})
	}
}

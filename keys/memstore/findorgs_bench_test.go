package memstore_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/keys/memstore"
)

// BenchmarkFindOrgs10k is the console's organization list on the embedded
// store with 10,000 organizations: it looks at every one per page.
func BenchmarkFindOrgs10k(b *testing.B) {
	s := memstore.New()
	ctx := context.Background()
	for i := range 10000 {
		o := keys.Org{ID: fmt.Sprintf("org-%05d", i), Name: fmt.Sprintf("Customer %d Inc", i), Email: fmt.Sprintf("ops%d@c%d.example", i, i%100),
			PlanID: 1, CreatedAt: time.Now()}
		if err := s.CreateOrg(ctx, o); err != nil {
			b.Fatal(err)
		}
	}
	for name, q := range map[string]keys.OrgQuery{
		"page":          {Limit: 50, After: "org-05000"},
		"search-prefix": {Search: "customer 12", Limit: 50},
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

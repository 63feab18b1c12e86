package keys_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/keys/memstore"
)

// BenchmarkRevokeInFullCache revokes one key of one organization while the
// cache holds 20,000 keys of 1,000 organizations: the revocation visits
// that organization's entries only, so its cost does not grow with the
// cache (any admin key can make revocations by creating and deleting keys).
func BenchmarkRevokeInFullCache(b *testing.B) {
	ctx := context.Background()
	st := memstore.New()
	if err := st.CreatePlan(ctx, keys.Plan{ID: 1, Name: "p", Period: "month"}); err != nil {
		b.Fatal(err)
	}
	a := keys.NewAuthenticator(st, keys.AuthOptions{TTL: time.Hour})
	for o := range 1000 {
		org := "org-" + strconv.Itoa(o)
		if err := st.CreateOrg(ctx, keys.Org{ID: org, Name: "o", PlanID: 1}); err != nil {
			b.Fatal(err)
		}
		for k := range 20 {
			secret, _ := keys.NewSecret()
			key := keys.Key{UID: org + "-" + strconv.Itoa(k), OrgID: org, Name: "k" + strconv.Itoa(k),
				Permissions: []keys.Permission{keys.PermRead}, SecretHash: keys.HashSecret(secret), CreatedAt: time.Now()}
			if err := st.CreateKey(ctx, key, -1); err != nil {
				b.Fatal(err)
			}
			if _, err := a.Authenticate(ctx, keys.Credential{Secret: secret}); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		a.Revoke(keys.Revocation{OrgID: "org-" + strconv.Itoa(i%1000), KeyUID: "none"})
	}
}

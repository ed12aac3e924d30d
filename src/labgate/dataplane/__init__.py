"""The kernel side: render desired state as nft text (render), run it in a namespace (nft, netns),
keep the kernel equal to the database (reconcile), and cut conntrack entries of removed forwards."""

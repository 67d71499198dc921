# Whoever runs `exchange-cli accounts`: writes the account registry, nothing else. (The records it writes must
# also be signed with the cluster secret, or the nodes ignore them.)
key_prefix "exchange/accounts/" {
  policy = "write"
}

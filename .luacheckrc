std = "lua54"
max_line_length = 130
files["spec"] = { std = "+busted" }
files["spec/support/counting.lua"] = { std = "+busted" }
exclude_files = { "build", "spec/fixtures/**/*.mod.c" }

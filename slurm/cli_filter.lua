--[[
cli_filter for slurmlab (Slurm runs it inside sbatch, on the submit host, as the submitting user).

A batch job whose output file cannot be created fails on the node with exit code 0:53 and an
empty log: the directory does not exist (Slurm never creates it) or the job user cannot write it
(e.g. a checkout that belongs to another user). Check that here, before anything is submitted,
and name the fix. Lua 5.1 (Debian's Slurm links liblua5.1).
--]]

local function shell_quote(s)
	return "'" .. string.gsub(s, "'", "'\\''") .. "'"
end

local function dirname(path)
	local dir = string.match(path, "^(.*)/[^/]*$")
	if dir == nil then
		return "."
	elseif dir == "" then
		return "/"
	end
	return dir
end

-- The directory a batch job's stdout/stderr file would be created in, or nil when there is none
-- to check (no file, or a directory name that only Slurm can expand, such as %u or %j).
local function output_dir(path, workdir)
	if path == nil or path == "" or path == "none" or path == "/dev/null" then
		return nil
	end
	if string.sub(path, 1, 1) ~= "/" then
		path = workdir .. "/" .. path
	end
	local dir = dirname(path)
	if string.find(dir, "%", 1, true) then
		return nil
	end
	return dir
end

local function check_dir(option, dir)
	if os.execute("test -d " .. shell_quote(dir)) ~= 0 then
		slurm.log_error("%s: directory %s does not exist, and Slurm does not create it. "
			.. "Create it first (mkdir -p %s) or point %s at an existing directory.",
			option, dir, dir, option)
		return false
	end
	if os.execute("test -w " .. shell_quote(dir)) ~= 0 then
		local user = os.getenv("USER") or "you"
		slurm.log_error("%s: the job's output would go to %s, which %s cannot write "
			.. "(it belongs to another user), so the job would fail with exit code 0:53. "
			.. "Submit from a directory you own, or pass --output=<a directory you can write>/%%x-%%j.out. "
			.. "In slurmlab the job user takes the uid of the checkout's owner: clone the project "
			.. "as an ordinary user, not root.",
			option, dir, user)
		return false
	end
	return true
end

function slurm_cli_setup_defaults(options, early_pass)
	return slurm.SUCCESS
end

function slurm_cli_pre_submit(options, pack_offset)
	if options["type"] ~= "sbatch" then
		return slurm.SUCCESS
	end
	local workdir = options["chdir"] or os.getenv("PWD") or "."
	-- sbatch's default output file is slurm-%j.out (or slurm-%A_%a.out) in the working directory.
	local output = options["output"] or "slurm-%j.out"
	for option, path in pairs({["--output"] = output, ["--error"] = options["error"]}) do
		local dir = output_dir(path, workdir)
		if dir ~= nil and not check_dir(option, dir) then
			return slurm.ERROR
		end
	end
	return slurm.SUCCESS
end

function slurm_cli_post_submit(offset, job_id, step_id)
	return slurm.SUCCESS
end

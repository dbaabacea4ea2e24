import time, sys
from ray.job_submission import JobSubmissionClient
c = JobSubmissionClient("http://127.0.0.1:35351", headers={"Authorization": "Bearer 25009113ea714ce46ea4c948ca20099fa2d42e7691aae768484149684926ca45"})
t=time.time()
sid = c.submit_job(entrypoint="/work/main/.venv/bin/python ticker.py --import-churn", runtime_env={"working_dir": "/work/main/tests/support/ray_entrypoints", "py_modules": ["/work/main/include/churn"], "env_vars": {"PYTHONPATH": ""}}, submission_id=sys.argv[1], entrypoint_num_cpus=0)
while not c.get_job_status(sid).is_terminal(): time.sleep(0.3)
print(time.time()-t)
print(repr(c.get_job_logs(sid)))
print(c.get_job_info(sid).start_time, time.time())
